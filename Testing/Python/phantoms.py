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
