"""Synthetic test volumes: matrices for any orientation and a head-like phantom (no real data)."""

import numpy as np

_DIRECTIONS = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}


def affine_for(axcodes: str, spacing=(1.0, 1.0, 1.0), origin=(10.0, -20.0, 30.0)) -> np.ndarray:
    """4x4 ijk->RAS matrix whose voxel axes point along ``axcodes`` (e.g. 'LPS', 'ASR')."""
    affine = np.eye(4)
    for axis, (code, size) in enumerate(zip(axcodes, spacing)):
        affine[:3, axis] = np.array(_DIRECTIONS[code], dtype=float) * size
    affine[:3, 3] = origin
    return affine


def head_phantom(shape=(40, 48, 24), seed=0) -> np.ndarray:
    """A skull-stripped-looking blob: zero background, textured positive ellipsoid inside."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    inside = (grid ** 2).sum(0) < 0.7
    image = (100 + 50 * grid[0] + 20 * rng.standard_normal(shape)) * inside
    return np.clip(image, 0, None).astype(np.float32)


def paired_phantom(shape=(40, 48, 20), seed=0):
    """``(t1, t2)``: one phantom 'subject' on one grid with the two contrasts a model learns to map:
    skull-stripped (zero background), white matter, grey matter and ventricles, bright-to-dark in
    T1 (WM > GM > CSF) and the reverse in T2, with a little texture. Made in the test, no real data."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    radius = np.sqrt(((grid / np.array([0.85, 0.9, 0.8])[:, None, None, None]) ** 2).sum(0))
    brain, white = radius < 1.0, radius < 0.65
    ventricles = (np.abs(grid[0]) < 0.12 + 0.04 * seed) & (np.abs(grid[1]) < 0.35) & (np.abs(grid[2]) < 0.4)
    t1 = np.where(white, 110.0, 70.0)
    t2 = np.where(white, 60.0, 90.0)
    t1[ventricles], t2[ventricles] = 25.0, 160.0
    texture = 1 + 0.05 * rng.standard_normal(shape)
    return ((t1 * texture * brain).astype(np.float32), (t2 * texture[::-1] * brain).astype(np.float32))
