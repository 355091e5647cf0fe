"""Shared pytest fixtures: real data location, synthetic volumes in any orientation, tiny models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"

_DIRECTIONS = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository; tests that need it skip when it is absent."""
    if not (SHARED_DATA / "paired").is_dir():
        pytest.skip(f"real MRI data not found at {SHARED_DATA} (only present in CI and on developer machines)")
    return SHARED_DATA


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


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A baseline (1x1-conv) T1->T2 model with 64x64 slices: fast, deterministic, real format."""
    import torch

    from MRISynthesisLib.checkpoint import ModelMetadata, save_checkpoint
    from MRISynthesisLib.models import build_model, default_config

    torch.manual_seed(0)
    config = default_config("baseline")
    model = build_model("baseline", **config)
    metadata = ModelMetadata(architecture="baseline", config=config, direction="t1-to-t2",
                             model_id="test-baseline", title="test model", slice_size=64, pixel_spacing_mm=4.0)
    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    return save_checkpoint(path, model, metadata)


@pytest.fixture(scope="session")
def tiny_unet_checkpoint(tmp_path_factory) -> Path:
    """A small U-Net (unet_128, ngf 4, 2.5D input with one neighbour each side)."""
    import torch

    from MRISynthesisLib.checkpoint import ModelMetadata, save_checkpoint
    from MRISynthesisLib.models import build_model, default_config

    torch.manual_seed(0)
    config = dict(default_config("unet_128"), ngf=4, in_channels=3)
    model = build_model("unet_128", **config)
    metadata = ModelMetadata(architecture="unet_128", config=config, direction="t1-to-t2",
                             model_id="test-unet", slice_size=128, pixel_spacing_mm=2.0, context_slices=1)
    path = tmp_path_factory.mktemp("models") / "unet.safetensors"
    return save_checkpoint(path, model, metadata)
