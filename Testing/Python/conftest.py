"""Shared pytest fixtures: real data location, synthetic volumes in any orientation, tiny models."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Tests never read or write the developer's own model catalog (where `python -m Training.export` writes);
# set here, before any test runs, so that subprocesses inherit it too.
os.environ["MRISYNTHESIS_USER_MODELS"] = tempfile.mkdtemp(prefix="mrisynthesis-test-user-models-")
atexit.register(shutil.rmtree, os.environ["MRISYNTHESIS_USER_MODELS"], True)


from shared_folder import REPO, SHARED_DATA  # noqa: E402 - the one definition of ../shared


@pytest.fixture(scope="session", autouse=True)
def engine_cache(tmp_path_factory):
    """Derived inference graphs (MRISynthesisLib.engines) go to a temporary folder, never to the
    user's cache; subprocesses inherit it."""
    import os

    from MRISynthesisLib.engines import CACHE_ENV

    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("engine-cache"))
    yield Path(os.environ[CACHE_ENV])
    if previous is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = previous


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository (:mod:`shared_folder`); the one fixture of the tests
    that need real data: they skip, with the reason, when it is absent (a fresh clone)."""
    if not (SHARED_DATA / "paired").is_dir():
        pytest.skip(f"real MRI data not found at {SHARED_DATA} (only present in CI and on developer machines)")
    return SHARED_DATA


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
