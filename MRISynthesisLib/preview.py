"""A PNG preview (input | synthetic, one axial slice) so a person can look without a viewer."""

from __future__ import annotations

import numpy as np

from .conventions import PERCENTILE_HIGH, PERCENTILE_LOW
from .orientation import to_canonical_slices
from .volume import Volume

#: Longest side of one panel in pixels; larger (or very anisotropic) slices are scaled down.
MAX_PANEL_PIXELS = 1024


def _display(slice_: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(slice_, [PERCENTILE_LOW, PERCENTILE_HIGH]) if slice_.any() else (0.0, 1.0)
    return np.clip((slice_ - lo) / max(hi - lo, 1e-6), 0, 1)


def write_png(canvas: np.ndarray, path) -> None:
    """Write a 2D uint8 image as PNG (no checks, not atomic).

    Pillow (a dependency of scikit-image) writes into a file this function opens and closes, so a
    failed write (a full disk) raises one error here; imageio's writer object deferred the writing
    to its close and, after a failure, reported a second error from its ``__del__``."""
    from PIL import Image

    with open(path, "wb") as stream:
        Image.fromarray(np.ascontiguousarray(canvas, dtype=np.uint8)).save(stream, format="PNG")


def render_preview(source: Volume, synthetic: Volume, reference: Volume | None = None) -> np.ndarray:
    """The preview picture as a 2D uint8 array (rows, cols).

    The slice is the synthetic volume's axial slice with the most foreground, the same slice in
    every panel (all volumes share the input's grid); radiological view (patient right on the
    image's left), aspect-correct for anisotropic voxels but at most :data:`MAX_PANEL_PIXELS` on
    a side, each panel windowed to its own 0.5..99.5 percentiles.
    """
    from skimage.transform import resize

    volumes = [source, synthetic] + ([reference] if reference is not None else [])
    stacks = [to_canonical_slices(v.array, v.affine) for v in volumes]
    shapes = {stack.shape for stack, _ in stacks}
    if len(shapes) != 1:
        raise ValueError("preview volumes must share one grid")
    synthetic_stack = stacks[1][0]
    counts = (synthetic_stack > 0).reshape(synthetic_stack.shape[0], -1).sum(1)
    index = int(np.argmax(counts)) if counts.any() else synthetic_stack.shape[0] // 2
    panels = []
    for stack, transform in stacks:
        image = _display(stack[index].astype(np.float32))
        row_mm, col_mm = transform.canonical_spacing[1:]
        height = image.shape[0] * row_mm / min(row_mm, col_mm)
        width = image.shape[1] * col_mm / min(row_mm, col_mm)
        scale = min(1.0, MAX_PANEL_PIXELS / max(height, width))
        height, width = max(1, int(round(height * scale))), max(1, int(round(width * scale)))
        panels.append(resize(image, (height, width), order=1, anti_aliasing=True))
    height = max(p.shape[0] for p in panels)
    canvas = np.zeros((height, sum(p.shape[1] for p in panels) + 4 * (len(panels) - 1)), np.float32)
    x = 0
    for panel in panels:
        canvas[: panel.shape[0], x: x + panel.shape[1]] = panel
        x += panel.shape[1] + 4
    return (canvas * 255).astype(np.uint8)
