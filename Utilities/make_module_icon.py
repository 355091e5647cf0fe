"""Draw the module icon (128 x 128 PNG): an axial head, T1-like on the left, T2-like on the right.

Run from the repository root: python Utilities/make_module_icon.py
"""

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 128
OUTPUT = Path(__file__).resolve().parents[1] / "MRISynthesis" / "Resources" / "Icons" / "MRISynthesis.png"


def headImage(size: int) -> np.ndarray:
    """RGBA: ellipse head; T1 look (bright white matter, dark fluid) left, T2 look (bright fluid) right."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    u, v = (x - size / 2 + 0.5) / (size * 0.40), (y - size / 2 + 0.5) / (size * 0.47)
    radius = np.sqrt(u ** 2 + v ** 2)
    head = radius < 1.0
    brain = radius < 0.84
    angle = np.arctan2(v, u)
    gyri = 0.68 + 0.03 * np.sin(22 * angle)  # folded grey-matter boundary
    greyMatter = brain & (radius > gyri)
    # Lateral ventricles: two thin crescents near the midline.
    crescent = ((np.abs(u) - 0.17 - 0.5 * (v + 0.05) ** 2) ** 2 / 0.008 + (v + 0.05) ** 2 / 0.12) < 1.0
    ventricles = crescent & brain
    # T1: fat (scalp) and white matter bright, grey matter darker, fluid black.
    t1 = np.select([ventricles, greyMatter, brain, head], [0.05, 0.55, 0.85, 0.95], 0.0)
    # T2: fluid bright, grey matter brighter than white matter, scalp medium.
    t2 = np.select([ventricles, greyMatter, brain, head], [1.0, 0.60, 0.38, 0.55], 0.0)
    grey = np.clip(np.where(x < size / 2, t1, t2), 0, 1)
    rgba = np.zeros((size, size, 4), np.float32)
    rgba[..., 0] = rgba[..., 1] = rgba[..., 2] = grey
    rgba[..., 3] = head.astype(np.float32)
    # A thin accent line between the two halves: the synthesis boundary.
    seam = (np.abs(x - size / 2 + 0.5) < 1.2) & head
    rgba[seam] = (0.25, 0.65, 1.0, 1.0)
    return (rgba * 255).round().astype(np.uint8)


def main() -> None:
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    # Draw at 4x and downsample for smooth edges.
    Image.fromarray(headImage(SIZE * 4), "RGBA").resize((SIZE, SIZE), Image.LANCZOS).save(OUTPUT)
    print(OUTPUT)


if __name__ == "__main__":
    main()
