"""Small PNG figures of the study (matplotlib, Agg backend): comparison grids, curves, uncertainty.

Only subjects of :data:`studies.comparison_protocol.FIGURE_SOURCES` (licence allows redistribution)
may be drawn; :func:`comparison_grid` refuses others. Images are canonical axial slices
(anterior up, patient right on the left of the image: radiological display).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from MRISynthesisLib.errors import InputError

from Training.logs import read_records
from studies.comparison_protocol import FIGURE_SOURCES

PANEL_INCHES = 1.05
DPI = 80
ERROR_MAX = 1.0  # relative error colour scale: 0 .. 100 %


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def comparison_grid(path, subjects: list, method_titles: dict, title: str) -> Path:
    """Per subject two rows: input | each method | real, and under each method its relative error map.

    ``subjects``: ``[{'id', 'source', 'input', 'real', 'mask', 'methods': {name: {'synthetic',
    'relative_error'}}}]`` with 2D arrays in [0, 1]; ``method_titles``: name -> column title (order kept).
    """
    for subject in subjects:
        if subject["source"] not in FIGURE_SOURCES:
            raise InputError(f"subject {subject['id']} ({subject['source']}) may not appear in a committed figure; "
                             f"only {', '.join(FIGURE_SOURCES)} subjects may")
    plt = _pyplot()
    names = [n for n in method_titles if all(n in s["methods"] for s in subjects)]
    columns = len(names) + 2
    rows = 2 * len(subjects)
    figure, axes = plt.subplots(rows, columns, figsize=(PANEL_INCHES * columns, PANEL_INCHES * rows + 0.35),
                                squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for index, subject in enumerate(subjects):
        top, bottom = axes[2 * index], axes[2 * index + 1]
        _show(top[0], subject["input"], f"input\n{subject['id']}")
        _show(top[-1], subject["real"], "real")
        for column, name in enumerate(names, start=1):
            panels = subject["methods"][name]
            _show(top[column], panels["synthetic"], method_titles[name])
            image = bottom[column].imshow(np.where(subject["mask"], panels["relative_error"], np.nan), cmap="magma",
                                          vmin=0.0, vmax=ERROR_MAX, interpolation="nearest")
            bottom[column].set_facecolor("black")
            bottom[column].set_axis_on()
            bottom[column].set_xticks([])
            bottom[column].set_yticks([])
        bottom[0].text(0.5, 0.5, "relative\n|error|\n(brain)\n0 - 100 %", ha="center", va="center", fontsize=6,
                       transform=bottom[0].transAxes)
        # The error rows have no image under 'real': the colour bar goes there.
        colour_bar = figure.colorbar(image, cax=bottom[-1].inset_axes([0.35, 0.05, 0.12, 0.9]))
        colour_bar.ax.tick_params(labelsize=5)
    figure.suptitle(title, fontsize=8)
    return _save(figure, path, plt)


def _show(ax, image, label):
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_title(label, fontsize=5.5)


def _save(figure, path, plt) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return path


def read_curves(run_dir) -> dict:
    """``{'train': [(step, loss name, value)], 'val': [(step, mae)], 'seconds_per_step'}`` of a run folder."""
    records = read_records(run_dir)
    train = [r for r in records if r["kind"] == "train"]
    loss_name = next((k for k in (train[0] if train else {}) if k not in ("kind", "epoch", "step", "lr")), None)
    return {"train": [(r["step"], r[loss_name]) for r in train if loss_name in r], "loss_name": loss_name,
            "val": [(r["step"], r["mae"]) for r in records if r["kind"] == "val" and "mae" in r]}


def training_curves(path, runs: dict, method_titles: dict, title: str) -> Path:
    """Training loss and validation MAE of each run against training minutes.

    ``runs``: name -> ``{'curves': read_curves(...), 'seconds_per_step': float}``.
    """
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(7.5, 2.8))
    for name, run in runs.items():
        scale = run["seconds_per_step"] / 60.0
        curves = run["curves"]
        if curves["train"]:
            steps, values = zip(*curves["train"])
            values = np.asarray(values, dtype=float)
            left.plot(np.asarray(steps) * scale, values / (values[0] if values[0] else 1.0), lw=0.8,
                      label=method_titles.get(name, name))
        if curves["val"]:
            steps, values = zip(*curves["val"])
            right.plot(np.asarray(steps) * scale, values, marker="o", ms=2.5, lw=0.8, label=method_titles.get(name, name))
    left.set_xlabel("training minutes")
    left.set_ylabel("main training loss / first value")
    left.set_yscale("log")
    right.set_xlabel("training minutes")
    right.set_ylabel("validation MAE (brain)")
    right.legend(fontsize=5.5, loc="upper right")
    figure.suptitle(title, fontsize=8)
    figure.tight_layout()
    return _save(figure, path, plt)


def uncertainty_figure(path, subject: dict, mean_slice, std_slice, title: str) -> Path:
    """input | VAE mean | posterior SD | |error| | real of one figure subject."""
    if subject["source"] not in FIGURE_SOURCES:
        raise InputError(f"subject {subject['id']} ({subject['source']}) may not appear in a committed figure")
    plt = _pyplot()
    figure, axes = plt.subplots(1, 5, figsize=(PANEL_INCHES * 5, PANEL_INCHES + 0.4))
    mask = subject["mask"]
    _show(axes[0], subject["input"], f"input {subject['id']}")
    _show(axes[1], mean_slice, "VAE mean")
    spread = axes[2].imshow(np.where(mask, std_slice, np.nan), cmap="viridis", vmin=0, interpolation="nearest")
    axes[2].set_title("posterior SD", fontsize=5.5)
    axes[3].imshow(np.where(mask, np.abs(mean_slice - subject["real"]), np.nan), cmap="magma", vmin=0, vmax=0.5,
                   interpolation="nearest")
    axes[3].set_title("|error| (0-0.5)", fontsize=5.5)
    _show(axes[4], subject["real"], "real")
    for ax in axes:
        ax.set_axis_off()
    figure.colorbar(spread, ax=axes[2], fraction=0.05)
    figure.suptitle(title, fontsize=7)
    return _save(figure, path, plt)
