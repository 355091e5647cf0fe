"""TensorBoard: a tiny training run writes its losses, validation metrics and validation images as
event files that TensorBoard itself reads back; a resumed run leaves no repeated steps there."""

import io
import json
import time

import numpy as np
import pytest

from Training.cli import main
from Training.train import train
from Training.config import load_config

pytest.importorskip("tensorboard")


def _events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def _records(run_dir, kind):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_training_writes_scalars_and_images_tensorboard_reads_back(training_data, cache_root, tmp_path,
                                                                    tiny_overrides):
    """Two epochs of two steps, interrupted during step 4 and resumed from the state of step 3."""
    manifest = training_data
    config = load_config(None, tiny_overrides(manifest, cache_root, tmp_path, "baseline", name="tb",
                                              train__steps_per_epoch=2, train__checkpoint_every=1,
                                              optim__lr=0.02))
    with pytest.raises(KeyboardInterrupt):
        train(config, stop_at_step=4, log=lambda *a: None)  # step 4 is logged, then the run dies
    # TensorBoard reads event files in name order, and a name holds the second it was opened and a
    # per-process counter ('.9' sorts after '.10'): a resume in the same second of the same process
    # (only a test is that fast) would be read first. A real resume is another process, later.
    time.sleep(1.1)
    assert main(["--resume", str(tmp_path / "tb")]) == 0    # repeats step 4
    run_dir = tmp_path / "tb"
    events = _events(run_dir)

    train_records, val_records = _records(run_dir, "train"), _records(run_dir, "val")
    losses = events.Scalars("train/loss_l1")
    assert [e.step for e in losses] == [r["step"] for r in train_records] == [1, 2, 3, 4]  # no repeated step
    np.testing.assert_allclose([e.value for e in losses], [r["loss_l1"] for r in train_records], rtol=1e-6)
    for metric in ("mae", "psnr", "ssim"):
        scalars = events.Scalars(f"val/{metric}")
        assert [e.step for e in scalars] == [r["step"] for r in val_records] == [2, 4]
        np.testing.assert_allclose([e.value for e in scalars], [r[metric] for r in val_records], rtol=1e-6)
    assert "baseline/mae" in events.Tags()["scalars"]

    images = events.Images("val/source_synthetic_target_error")
    assert [e.step for e in images] == [2, 4]
    from skimage.io import imread

    grid = imread(run_dir / "images" / "epoch_002.png")
    decoded = imread(io.BytesIO(images[-1].encoded_image_string))
    assert (images[-1].height, images[-1].width) == grid.shape[:2] == decoded.shape[:2]
    assert decoded.std() > 0  # a picture, not a blank
