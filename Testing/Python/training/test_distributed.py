"""A 2-process torchrun run (gloo, CPU) completes; only rank 0 logs and writes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.realdata
@pytest.mark.slow
def test_two_process_gloo_run_completes_and_only_rank_0_writes(manifest, cache_root, tmp_path, tiny_overrides):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    overrides = tiny_overrides(manifest, cache_root, tmp_path, "pix2pix", name="ddp",
                               model__generator="resnet_6blocks", model__generator_options="{ngf: 4, norm: batch}",
                               loss__gan_mode="wgan-gp", train__epochs=1, train__steps_per_epoch=3,
                               train__checkpoint_every=1)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    result = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29531", "-m", "Training",
                             *overrides], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "ddp"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3]   # one writer, not two
    assert [r["kind"] for r in records].count("val") == 1
    assert result.stdout.count("done:") == 1
    assert (run_dir / "checkpoints" / "best-t1-to-t2.safetensors").is_file()
    written = sorted(p.name for p in run_dir.iterdir() if p.name != "tensorboard")  # present when installed
    assert written == sorted(
        ["checkpoints", "config.yaml", "curves.png", "images", "metrics.csv", "metrics.jsonl", "report.md",
         "split.json", "train_state.pt"])
