"""A PNG preview (input | synthetic, middle axial slices) so a person can look without a viewer."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .orientation import to_canonical_slices
from .volume import Volume


def _display(slice_: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(slice_, [0.5, 99.5]) if slice_.any() else (0.0, 1.0)
    return np.clip((slice_ - lo) / max(hi - lo, 1e-6), 0, 1)


def write_preview(source: Volume, synthetic: Volume, path, titles=("input", "synthetic"), reference: Volume | None = None) -> Path:
    """Write a PNG of the central axial slice of each volume side by side (radiological view:
    patient right on the image's left), aspect-correct for anisotropic voxels. Atomic write."""
    from skimage.io import imsave
    from skimage.transform import resize

    volumes = [source, synthetic] + ([reference] if reference is not None else [])
    panels = []
    for volume in volumes:
        stack, transform = to_canonical_slices(volume.array, volume.affine)
        mask = stack > 0
        counts = mask.reshape(stack.shape[0], -1).sum(1)
        index = int(np.argmax(counts)) if counts.any() else stack.shape[0] // 2
        image = _display(stack[index].astype(np.float32))
        row_mm, col_mm = transform.canonical_spacing[1:]
        height = max(1, int(round(image.shape[0] * row_mm / min(row_mm, col_mm))))
        width = max(1, int(round(image.shape[1] * col_mm / min(row_mm, col_mm))))
        panels.append(resize(image, (height, width), order=1, anti_aliasing=True))
    height = max(p.shape[0] for p in panels)
    canvas = np.zeros((height, sum(p.shape[1] for p in panels) + 4 * (len(panels) - 1)), np.float32)
    x = 0
    for panel in panels:
        canvas[: panel.shape[0], x: x + panel.shape[1]] = panel
        x += panel.shape[1] + 4
    path = Path(path)
    handle, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=str(path.parent))
    os.close(handle)
    try:
        imsave(tmp, (canvas * 255).astype(np.uint8), check_contrast=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
