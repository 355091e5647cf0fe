"""Visual quality control of a BIDS App run: per-item pictures and one HTML page for the cohort.

Pictures (``OUTPUT_DIR/sub-<label>/figures/<stem>_<kind>.png``, kinds ``input``, ``synthetic``,
``reference``, ``error``): three orthogonal planes through the brain's centre of mass (axial,
coronal, sagittal from top to bottom, so the pictures of one item compare side by side), in the
radiological convention (patient right on the image's left; superior up), aspect-correct for
anisotropic voxels. ``input`` is windowed to its own 0.5..99.5 percentiles; ``synthetic`` and
``reference`` (the real target, percentile-normalised in its brain mask) share the window
[0, 1] of the normalised units, so their brightness is comparable; ``error`` is
|synthetic - reference| on a black-red-yellow-white scale from 0 to :data:`ERROR_WINDOW`. When the
brain mask was extracted from a whole-head scan (or given), its outline is drawn on ``input``.

``OUTPUT_DIR/report.html`` is rebuilt from the sidecars and failure records on disk, so any job
(or ``mrisynthesis bids ... group``) can write it; the pictures are next to it (relative links)
and the page needs nothing else: no scripts, no fonts, no network.
"""

from __future__ import annotations

import html
import json
import os
import re
import urllib.parse
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .bids import generated_by
from .conventions import PERCENTILE_HIGH, PERCENTILE_LOW
from .orientation import to_canonical_slices
from .volume import Volume

FIGURE_KINDS = ("input", "synthetic", "reference", "error")
PLANE_HEIGHT = 150  # pixels of each plane in the pictures
#: |synthetic - real| shown from black (0) to white (this value), the same for every item of a report.
ERROR_WINDOW = 1.0
OUTLINE_RGB = (0, 220, 255)  # the brain mask's outline on the input picture
FAILURE_SUFFIX = "_failure.json"
REPORT_NAME = "report.html"
#: In the head of every report we write: a report.html without it is someone else's and is never replaced.
GENERATOR = '<meta name="generator" content="MRISynthesis">'
_OLD_TITLE = "<title>MRISynthesis QC:"  # reports written before the generator tag
#: Schemes a DatasetLinks URI may have to become a link (anything else, e.g. javascript:, stays text).
SAFE_SCHEMES = ("http", "https", "file")


def figure_path(figures_dir, stem: str, kind: str) -> Path:
    return Path(figures_dir) / f"{stem}_{kind}.png"


def _planes(stack: np.ndarray, spacing, centre) -> list[np.ndarray]:
    """Axial, coronal and sagittal planes of a canonical stack ``(slice I->S, row A->P, col R->L)``."""
    k, j, i = centre
    axial = stack[k]                       # rows anterior->posterior, cols right->left
    coronal = stack[::-1, j, :]            # rows superior->inferior, cols right->left
    sagittal = stack[::-1, :, i]           # rows superior->inferior, cols anterior->posterior
    slice_mm, row_mm, col_mm = spacing
    return [_resize(axial, row_mm, col_mm), _resize(coronal, slice_mm, col_mm), _resize(sagittal, slice_mm, row_mm)]


def _resize(image: np.ndarray, row_mm: float, col_mm: float) -> np.ndarray:
    from skimage.transform import resize

    height_mm, width_mm = image.shape[0] * row_mm, image.shape[1] * col_mm
    width = max(1, int(round(PLANE_HEIGHT * width_mm / max(height_mm, 1e-6))))
    return resize(image.astype(np.float32), (PLANE_HEIGHT, width), order=1, anti_aliasing=True)


def _hot(values: np.ndarray) -> np.ndarray:
    """Black -> red -> yellow -> white for values in [0, 1]; returns uint8 RGB."""
    v = np.clip(values, 0, 1)[..., None]
    rgb = np.clip(np.concatenate([3 * v, 3 * v - 1, 3 * v - 2], axis=-1), 0, 1)
    return (rgb * 255).astype(np.uint8)


def _grey(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    grey = (np.clip((values - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def _montage(planes: list[np.ndarray]) -> np.ndarray:
    """The planes stacked top to bottom, each centred on a common width, on a dark gap."""
    width = max(plane.shape[1] for plane in planes)
    parts = []
    for plane in planes:
        left = (width - plane.shape[1]) // 2
        row = np.zeros((PLANE_HEIGHT, width, 3), np.uint8)
        row[:, left:left + plane.shape[1]] = plane
        parts += [row, np.full((4, width, 3), 40, np.uint8)]
    return np.concatenate(parts[:-1], axis=0)


def _outline(picture: np.ndarray, mask_plane: np.ndarray) -> np.ndarray:
    """``picture`` (uint8 RGB) with the border of ``mask_plane`` (same height/width, values 0..1) drawn in cyan."""
    from scipy.ndimage import binary_erosion

    inside = mask_plane > 0.5
    border = inside & ~binary_erosion(inside, border_value=0)
    drawn = picture.copy()
    drawn[border] = OUTLINE_RGB
    return drawn


def write_figures(figures_dir, stem: str, source: Volume, synthetic: Volume,
                  reference: Volume | None = None, mask=None) -> dict:
    """Write the item's pictures; returns ``{kind: path}``. All volumes share ``source``'s grid.

    ``reference``: the real target contrast already normalised to [0, 1] in its brain mask
    (0 outside it), or ``None``. ``mask``: a brain mask ``[i, j, k]`` that is not simply the input's
    non-zero region (extracted from a whole-head scan, or given): its outline is drawn on the input.
    """
    from skimage.io import imsave

    stacks = {"input": source, "synthetic": synthetic}
    if reference is not None:
        stacks["reference"] = reference
    if mask is not None:
        stacks["mask"] = source.with_array(np.asarray(mask, np.float32))
    canonical = {}
    for kind, volume in stacks.items():
        canonical[kind], transform = to_canonical_slices(np.asarray(volume.array, np.float32), source.affine)
    spacing = transform.canonical_spacing
    foreground = canonical["synthetic"] > 0
    if not foreground.any():
        foreground = canonical["input"] > 0
    centre = tuple(int(round(c)) for c in (np.argwhere(foreground).mean(axis=0) if foreground.any()
                                           else np.array(foreground.shape) / 2))
    images = {}
    source_values = canonical["input"][canonical["input"] > 0]
    lo, hi = (np.percentile(source_values, [PERCENTILE_LOW, PERCENTILE_HIGH]) if source_values.size else (0.0, 1.0))
    input_planes = [_grey(p, lo, hi) for p in _planes(canonical["input"], spacing, centre)]
    if mask is not None:
        input_planes = [_outline(picture, plane)
                        for picture, plane in zip(input_planes, _planes(canonical["mask"], spacing, centre))]
    images["input"] = _montage(input_planes)
    images["synthetic"] = _montage([_grey(p, 0, 1) for p in _planes(canonical["synthetic"], spacing, centre)])
    if reference is not None:
        images["reference"] = _montage([_grey(p, 0, 1) for p in _planes(canonical["reference"], spacing, centre)])
        inside = (canonical["reference"] > 0) | (canonical["synthetic"] > 0)
        error = np.abs(canonical["synthetic"] - canonical["reference"]) * inside
        images["error"] = _montage([_hot(p / ERROR_WINDOW) for p in _planes(error, spacing, centre)])
    Path(figures_dir).mkdir(parents=True, exist_ok=True)
    written = {}
    for kind, image in images.items():
        path = figure_path(figures_dir, stem, kind)
        with atomic_path(path) as tmp:
            imsave(tmp, image, check_contrast=False)
        written[kind] = path
    for kind in FIGURE_KINDS:  # a re-run without a reference must not show an old one
        if kind not in written and figure_path(figures_dir, stem, kind).exists():
            os.remove(figure_path(figures_dir, stem, kind))
    return written


# -- the HTML page ------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:0}
.warn{background:#fff3cd;border:1px solid #e0c36a;padding:8px 12px;border-radius:4px;margin:10px 0}
.fail{background:#fde2e1;border:1px solid #d9534f}
table.summary{border-collapse:collapse;margin:12px 0}
table.summary td,table.summary th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}
table.summary td.num{text-align:right;font-variant-numeric:tabular-nums}
.item{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px;margin:16px 0}
.row{display:flex;flex-wrap:wrap;gap:10px;margin-top:8px}
figure{margin:0}figure img{display:block;background:#000}
figcaption{font-size:12px;color:#555;margin-top:2px}
.meta{font-size:13px;margin-top:6px}.meta a{margin-right:12px}.meta a.src{margin-right:0}
.status-done{color:#1a7f37}.status-failed{color:#c00}
"""


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else None
    except (OSError, json.JSONDecodeError):
        return None


def _as_list(value) -> list:
    """A sidecar field that should be a list of strings, as one: ``"abc"`` is one entry, ``null`` none."""
    if value is None:
        return []
    if isinstance(value, list):
        return [v if isinstance(v, str) else json.dumps(v) for v in value]
    return [value if isinstance(value, str) else json.dumps(value)]


def _as_dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _as_number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def collect_items(output_dir) -> list[dict]:
    """One record per item found on disk: finished ones (sidecar) and failed ones (failure record)."""
    output_dir = Path(output_dir)
    records = {}
    for sidecar in sorted(output_dir.glob("sub-*/**/anat/*_desc-synthetic_*.json")):
        data = _read_json(sidecar)
        image = sidecar.with_name(sidecar.name[: -len(".json")] + ".nii.gz")
        if data is None or not image.exists():
            continue
        stem = sidecar.name[: -len(".json")]
        subject = sidecar.relative_to(output_dir).parts[0]
        records[stem] = {"stem": stem, "status": "done", "sidecar": data, "subject": subject,
                         "image": image.relative_to(output_dir).as_posix(),
                         "sidecar_path": sidecar.relative_to(output_dir).as_posix(),
                         "figures": output_dir / subject / "figures"}
    for failure in sorted(output_dir.glob(f"sub-*/figures/*{FAILURE_SUFFIX}")):
        stem = failure.name[: -len(FAILURE_SUFFIX)]
        data = _read_json(failure)
        if stem in records or data is None:
            continue
        subject = failure.relative_to(output_dir).parts[0]
        records[stem] = {"stem": stem, "status": "failed", "failure": data, "subject": subject,
                         "figures": failure.parent}
    return [records[stem] for stem in sorted(records)]


def _number(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _metrics_cells(metrics) -> str:
    metrics = _as_dict(metrics)
    return "".join(f'<td class="num">{_number(_as_number(metrics.get(name)), d)}</td>'
                   for name, d in (("BrainMAE", 3), ("BrainPSNR", 2), ("BrainSSIM", 3)))


def render_report(output_dir) -> str:
    """The HTML text of the report for everything found in ``output_dir``."""
    output_dir = Path(output_dir)
    description = _read_json(output_dir / "dataset_description.json") or {}
    generated = generated_by(description)
    items = collect_items(output_dir)
    failed = [r for r in items if r["status"] == "failed"]
    e = html.escape
    parts = [
        "<!DOCTYPE html>", f'<html lang="en"><head><meta charset="utf-8">{GENERATOR}',
        f"<title>MRISynthesis QC: {e(str(description.get('Name', output_dir.name)))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{e(str(description.get('Name', 'MRISynthesis derivatives')))}</h1>",
        f"<div>MRISynthesis {e(str(generated.get('Version', '?')))}, model <b>{e(str(generated.get('ModelId', '?')))}</b>"
        f" (sha256 <code>{e(str(generated.get('ModelSHA256', ''))[:16])}</code>&hellip;); "
        f"{len(items) - len(failed)} item(s) done, {len(failed)} failed.</div>",
        '<div class="warn"><b>Synthetic images are not for diagnosis.</b> They are research outputs: a model can '
        "invent or erase structures, especially lesions it has not seen in training. Look at every subject.</div>",
        "<p style=\"font-size:13px\">Planes, top to bottom: axial, coronal, sagittal through the brain's centre of mass; patient "
        "right on the image's left. <i>input</i>: own 0.5&ndash;99.5 percentile window; <i>synthetic</i> and "
        "<i>real</i> (percentile-normalised in its brain mask): window 0&ndash;1 in normalised units; "
        f"<i>error</i>: |synthetic &minus; real|, black 0 to white {ERROR_WINDOW:g}. A cyan line on the input: the "
        "brain mask synthesis used, when it was extracted from a whole-head scan or given. Metrics inside the brain "
        "mask of the real image (same conventions as the model cards).</p>",
        '<table class="summary"><tr><th>item</th><th>status</th><th>MAE</th><th>PSNR (dB)</th><th>SSIM</th>'
        "<th>warnings</th></tr>",
    ]
    for record in items:
        sidecar = record.get("sidecar", {})
        n_warnings = len(_as_list(sidecar.get("Warnings"))) if record["status"] == "done" else "-"
        parts.append(f'<tr><td><a href="#{e(record["stem"])}">{e(record["stem"])}</a></td>'
                     f'<td class="status-{record["status"]}">{record["status"]}</td>'
                     f"{_metrics_cells(sidecar.get('Metrics'))}<td>{n_warnings}</td></tr>")
    parts.append("</table>")
    raw_root = _as_dict(description.get("DatasetLinks")).get("raw")
    for record in items:
        parts.append(_item_html(record, output_dir, raw_root if isinstance(raw_root, str) else None))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def safe_link_root(uri: str | None) -> bool:
    """True for a relative path or an http(s)/file URI: what a ``DatasetLinks`` entry may be to become
    a link. Anything a browser could run (``javascript:``, ``data:``, with spaces, tabs or case
    games before the colon) or that holds control characters is not."""
    if not isinstance(uri, str) or not uri or any(ord(c) < 32 or ord(c) == 127 for c in uri):
        return False
    scheme = re.match(r"^\s*([^/?#]*?):", uri)
    return scheme is None or scheme.group(1).lower() in SAFE_SCHEMES


def _source_link(uri: str, raw_root: str | None) -> str:
    """``bids:raw:<path>`` as a link into the raw dataset (its ``DatasetLinks`` URI), else as text."""
    text = f"<code>{html.escape(uri)}</code>"
    if safe_link_root(raw_root) and uri.startswith("bids:raw:"):
        href = raw_root.rstrip("/") + "/" + urllib.parse.quote(uri[len("bids:raw:"):])
        return f'<a class="src" href="{html.escape(href)}">{text}</a>'
    return text


def _item_html(record: dict, output_dir: Path, raw_root: str | None = None) -> str:
    e = html.escape
    stem = record["stem"]
    if record["status"] == "failed":
        failure = record["failure"]
        return (f'<div class="item" id="{e(stem)}"><h2>{e(stem)} <span class="status-failed">failed</span></h2>'
                f'<div class="warn fail">{e(str(failure.get("Error", "")))}</div>'
                f'<div class="meta">source: <code>{e(str(failure.get("Source", "")))}</code></div></div>')
    sidecar = record["sidecar"]
    captions = {"input": f"input {sidecar.get('SourceContrast', '')}", "synthetic": "synthetic",
                "reference": f"real {sidecar.get('TargetContrast', '')}", "error": "|synthetic - real|"}
    figures = []
    for kind in FIGURE_KINDS:
        path = figure_path(record["figures"], stem, kind)
        if path.exists():
            src = path.relative_to(output_dir).as_posix()
            figures.append(f'<figure><a href="{e(src)}"><img src="{e(src)}" alt="{e(kind)} of {e(stem)}"></a>'
                           f"<figcaption>{e(captions[kind])}</figcaption></figure>")
    metrics = _as_dict(sidecar.get("Metrics"))
    number = {name: _as_number(metrics.get(name)) for name in ("BrainMAE", "BrainPSNR", "BrainSSIM")}
    metric_text = (f"brain MAE {_number(number['BrainMAE'], 3)}, PSNR {_number(number['BrainPSNR'], 2)} dB, "
                   f"SSIM {_number(number['BrainSSIM'], 3)} against <code>{e(str(metrics.get('Reference', '')))}</code>"
                   if metrics else _no_metrics_text(sidecar))
    warnings = "".join(f'<div class="warn">{e(w)}</div>' for w in _as_list(sidecar.get("Warnings")))
    sources = ", ".join(_source_link(s, raw_root) for s in _as_list(sidecar.get("Sources")))
    return (f'<div class="item" id="{e(stem)}"><h2>{e(stem)} <span class="status-done">done</span></h2>'
            f'<div class="row">{"".join(figures)}</div>'
            f'<div class="meta">{metric_text}</div>{warnings}'
            f'<div class="meta"><a href="{e(record["image"])}">synthetic image</a>'
            f'<a href="{e(record["sidecar_path"])}">sidecar JSON</a> source: {sources}; '
            f"device {e(str(sidecar.get('Device', '?')))}, precision {e(str(sidecar.get('Precision', '?')))}</div></div>")


def check_report_is_ours(output_dir) -> None:
    """Refuse (:class:`OutputError`) an ``OUTPUT_DIR/report.html`` that MRISynthesis did not write."""
    from .errors import OutputError

    path = Path(output_dir) / REPORT_NAME
    if not path.exists() and not path.is_symlink():
        return
    try:
        with open(path, "rb") as stream:
            head = stream.read(4096).decode("utf-8", errors="replace") if path.is_file() and not path.is_symlink() else ""
    except OSError:
        head = ""
    if GENERATOR not in head and _OLD_TITLE not in head:
        raise OutputError(f"{path} exists and was not written by MRISynthesis; it is never replaced: "
                          "choose another OUTPUT_DIR or move that file away")


def _no_metrics_text(sidecar: dict) -> str:
    """Why an item has no metrics: no real target image at all, or one that could not be used (its
    warning says why: another voxel grid, unreadable, ...)."""
    reference = sidecar.get("Reference")
    if isinstance(reference, str) and reference:
        return (f"no metrics: the real {html.escape(str(sidecar.get('TargetContrast', 'target')))} image "
                f"<code>{html.escape(reference)}</code> could not be compared (see the warning below)")
    return "no real target image of this item: no metrics"


def write_report(output_dir) -> Path:
    """Rebuild ``OUTPUT_DIR/report.html`` from what is on disk (atomic; serialised by a lock file).

    Every job of a job array may call this when it finishes: the lock makes the scans and writes
    take turns, so the last job to finish writes a report that includes every finished job.
    """
    output_dir = Path(output_dir)
    path = output_dir / REPORT_NAME
    with _lock(output_dir / ".report.lock"):
        check_report_is_ours(output_dir)
        text = render_report(output_dir)
        with atomic_path(path, suffix=".html") as tmp, open(tmp, "w", encoding="utf-8") as stream:
            stream.write(text)
    return path


class _lock:
    """Exclusive advisory lock on a file (POSIX ``flock``; a no-op where it does not exist)."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.stream = open(self.path, "a")
        try:
            import fcntl

            fcntl.flock(self.stream.fileno(), fcntl.LOCK_EX)
        except (ImportError, OSError):
            pass
        return self

    def __exit__(self, *exc):
        self.stream.close()  # closing releases the lock
        return False
