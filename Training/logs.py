"""Run outputs a person reads: progress bar, metrics files, image grids and the final report.

- ``metrics.jsonl``: one JSON object per record ``{"kind", "epoch", "step", <values>}`` where kind
  is ``train`` (losses and learning rate every ``log_every`` steps), ``val`` (validation means) or
  ``baseline`` (the inverted-source baseline, once).
- ``metrics.csv``: the same numbers in long format ``kind,epoch,step,name,value`` (one row per
  number, so a resumed run or a new loss never changes the columns).
- TensorBoard event files under ``tensorboard/`` when the optional ``tensorboard`` package is
  installed (the ``[train]`` extra): every logged number as a scalar ``<kind>/<name>`` at its
  global step, and the validation grid as the image ``val/source_synthetic_target_error`` at the
  step of its validation. A resumed run discards the events after its checkpoint's step.
- ``images/epoch_NNN.png``: source | synthetic | target | |error| of the first validation subject.
- ``report.md`` with ``curves.png`` at the end of training.

Only rank 0 creates a :class:`RunLogger` that writes; the others get ``enabled=False``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from .run_folder import RunFolder

CSV_HEADER = ["kind", "epoch", "step", "name", "value"]


def _json_number(value):
    """JSON has no inf/nan: write them as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class RunLogger:
    def __init__(self, run_dir, enabled: bool = True, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.run = RunFolder(run_dir)
        self.enabled = enabled
        self.writer = None
        self._last_step = 0
        if enabled and tensorboard:
            self._open_tensorboard()

    def _open_tensorboard(self, purge_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self.writer = SummaryWriter(str(self.run.tensorboard), purge_step=purge_step)

    @property
    def jsonl_path(self) -> Path:
        return self.run.metrics_jsonl

    @property
    def csv_path(self) -> Path:
        return self.run.metrics_csv

    def log(self, kind: str, epoch: int, step: int, values: dict) -> None:
        if not self.enabled:
            return
        self._last_step = step
        record = {"kind": kind, "epoch": epoch, "step": step, **values}
        with open(self.jsonl_path, "a", encoding="utf-8") as stream:
            stream.write(json.dumps({k: _json_number(v) for k, v in record.items()}) + "\n")
        new = not self.csv_path.exists()
        with open(self.csv_path, "a", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            if new:
                writer.writerow(CSV_HEADER)
            for name, value in values.items():
                if isinstance(value, (int, float)):
                    writer.writerow([kind, epoch, step, name, value])
        if self.writer is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"{kind}/{name}", value, step)

    def forget_after(self, step: int) -> None:
        """Drop records written after ``step`` (a resumed run repeats those steps)."""
        if not self.enabled:
            return
        if self.writer is not None:  # TensorBoard hides events after purge_step from the old files
            self.writer.close()
            self._open_tensorboard(purge_step=step + 1)
        if self.jsonl_path.exists():
            lines = self.jsonl_path.read_text(encoding="utf-8").splitlines()
            kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
            self.jsonl_path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        if self.csv_path.exists():
            with open(self.csv_path, newline="", encoding="utf-8") as stream:
                rows = list(csv.reader(stream))
            kept = [rows[0]] + [row for row in rows[1:] if int(row[2]) <= step]
            with open(self.csv_path, "w", newline="", encoding="utf-8") as stream:
                csv.writer(stream).writerows(kept)

    def save_grid(self, epoch: int, panels: np.ndarray) -> Path | None:
        """Save source | synthetic | target | |error| side by side (values in [0, 1])."""
        if not self.enabled or panels is None:
            return None
        import matplotlib
        matplotlib.use("Agg")
        from matplotlib import image as mpimg

        path = self.run.image(epoch)
        path.parent.mkdir(parents=True, exist_ok=True)
        gap = np.ones((panels.shape[1], 2), dtype=np.float32)
        row = np.concatenate([np.concatenate([np.clip(p, 0, 1), gap], axis=1) for p in panels], axis=1)
        mpimg.imsave(str(path), row, cmap="gray", vmin=0.0, vmax=1.0)
        if self.writer is not None:
            self.writer.add_image("val/source_synthetic_target_error", np.clip(row, 0, 1), self._last_step,
                                  dataformats="HW")
        return path

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def read_records(run_dir) -> list[dict]:
    path = RunFolder(run_dir).metrics_jsonl
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_report(run_dir, config_yaml: str, summary: dict) -> Path:
    """``report.md`` + ``curves.png``: losses per step, validation metrics per epoch, best/last."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_records(run_dir)
    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val"]
    baseline = next((r for r in records if r["kind"] == "baseline"), None)

    loss_names = sorted({k for r in train for k in r if k.startswith(("loss", "g_", "d_")) and
                         isinstance(r[k], (int, float))})
    figure, axes = plt.subplots(1, 4, figsize=(18, 4))
    for name in loss_names:
        axes[0].plot([r["step"] for r in train if name in r], [r[name] for r in train if name in r], label=name)
    axes[0].set_xlabel("step")
    axes[0].set_title("training losses")
    if loss_names:
        axes[0].legend(fontsize=7)
    for axis, metric in zip(axes[1:], ("mae", "psnr", "ssim")):
        axis.plot([r["epoch"] for r in val], [r.get(metric, float("nan")) for r in val], "o-", label="model")
        if baseline and metric in baseline:
            axis.axhline(baseline[metric], color="grey", linestyle="--", label="inverted source")
        axis.set_xlabel("epoch")
        axis.set_title(f"validation {metric.upper()} (in brain mask)")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(RunFolder(run_dir).curves, dpi=80)
    plt.close(figure)

    def row(label, values):
        values = values or {}
        return f"| {label} | " + " | ".join(_fmt(values.get(m)) for m in ("mae", "psnr", "ssim")) + " |"

    lines = [f"# Training report: {summary.get('name', run_dir.name)}", "",
             f"Family **{summary.get('family')}**, direction {summary.get('direction')}, "
             f"{summary.get('epochs_done')} epoch(s), {summary.get('steps_done')} step(s), "
             f"{summary.get('train_subjects')} training / {summary.get('val_subjects')} validation subjects, "
             f"{summary.get('train_slices')} training slices; wall time {summary.get('seconds', 0):.0f} s.", "",
             "## Validation (whole volumes through the Synthesizer, inside the brain mask)", "",
             "| | MAE | PSNR (dB) | SSIM |", "|---|---|---|---|",
             row(f"best (epoch {summary.get('best_epoch')})", summary.get("best")),
             row("last", summary.get("last")),
             row("baseline: inverted source", baseline), "",
             f"Best checkpoint chosen by **{summary.get('metric')}**. Conventions: "
             f"{summary.get('conventions_text', 'see metrics.jsonl')}.", "",
             f"![curves]({RunFolder.CURVES})", "", "## Exported checkpoints", ""]
    lines += [f"- `{path}`" for path in summary.get("checkpoints", [])]
    lines += ["", "## Configuration", "", "```yaml", config_yaml.rstrip(), "```", ""]
    path = RunFolder(run_dir).report
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _fmt(value):
    if value is None:
        return "-"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
