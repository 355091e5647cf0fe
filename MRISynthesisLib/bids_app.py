"""The BIDS App: ``mrisynthesis bids BIDS_DIR OUTPUT_DIR participant|group [options]``.

``participant``: synthesize the missing contrast of every selected T1w (or T2w) image and write
BIDS derivatives (image + JSON sidecar, and the brain mask used as ``desc-brain_mask``), QC
pictures and ``report.html``. Items run in ``--jobs`` processes; one item's failure is recorded
(in the summary, in ``sub-<label>/figures/<stem>_failure.json`` and in the report) and does not
stop the others; the exit status is 1 if any item failed. With ``--skip-existing`` (default) an
item whose image and sidecar exist for the same request (:func:`request_key`: the content of its
input files, the model and every option that changes the output) is skipped, so an interrupted
run resumes where it stopped. A ``report.html`` that MRISynthesis did not write is never replaced.
``group``: only rebuild ``report.html`` from what all participant jobs wrote (the last step of
a job array).

Every file is written atomically, so parallel jobs (processes or cluster tasks) never see or
leave half-written outputs; see :mod:`MRISynthesisLib.bids` for ``dataset_description.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .bids import (SUFFIXES, BidsItem, create_once, dataset_description, derivative_paths, discover,
                   ensure_dataset_description, find_brain_mask)
from .conventions import DEFAULT_DIRECTION
from .engines import ENGINE_CHOICES
from .errors import InputError, MRISynthesisError, OutputError, first_line
from .qc_report import FAILURE_SUFFIX, check_report_is_ours, write_figures, write_report

NOT_FOR_DIAGNOSIS = "Synthetic images are not for diagnosis."
BIDSIGNORE = "report.html\n.report.lock\nsub-*/figures/\n"


def add_parser(commands) -> None:
    """Add the ``bids`` subcommand to the CLI's subparsers."""
    app = commands.add_parser(
        "bids", help="BIDS App: synthesize the missing contrast of a whole BIDS dataset",
        description="BIDS App (BIDS_DIR OUTPUT_DIR ANALYSIS_LEVEL). participant: write BIDS derivatives "
                    "sub-<label>/[ses-<label>/]anat/*_desc-synthetic_T2w.nii.gz (or _T1w) with JSON sidecars, QC "
                    "pictures and OUTPUT_DIR/report.html; group: only rebuild report.html. "
                    f"{NOT_FOR_DIAGNOSIS}")
    app.add_argument("bids_dir", metavar="BIDS_DIR", help="the raw BIDS dataset (read only)")
    app.add_argument("output_dir", metavar="OUTPUT_DIR", help="derivatives folder (created if missing)")
    app.add_argument("analysis_level", metavar="ANALYSIS_LEVEL", choices=["participant", "group"],
                     help="participant (synthesize) or group (rebuild the report)")
    app.add_argument("--participant-label", nargs="+", default=None, metavar="LABEL",
                     help="only these participants (with or without 'sub-'); default: all")
    app.add_argument("--session-label", nargs="+", default=None, metavar="LABEL",
                     help="only these sessions (with or without 'ses-'); default: all")
    app.add_argument("--direction", default=DEFAULT_DIRECTION, choices=sorted(SUFFIXES),
                     help="t1-to-t2 reads *_T1w, writes *_desc-synthetic_T2w (default); t2-to-t1 the reverse")
    app.add_argument("--model", default=None,
                     help="catalog id or .safetensors checkpoint; default: the shipped default of --direction")
    app.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                     help="auto: CUDA, then Apple MPS, then CPU (default: auto)")
    app.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                     help="network arithmetic (default auto: bf16 where the hardware computes it natively, else fp32)")
    app.add_argument("--engine", default="auto", choices=list(ENGINE_CHOICES),
                     help="what runs the network (default auto: the engine measured fastest for this network "
                          "on this kind of CPU, same result within 1e-5; README 'Inference engines')")
    app.add_argument("--brain-mask", default="auto", choices=["auto", "extract", "none"],
                     help="auto: extract the brain of whole-head scans first (skull-stripped inputs are left "
                          "alone; docs/brain-mask-decision.md); extract: always extract; none: synthesise inside "
                          "the foreground mask as is (default: auto)")
    app.add_argument("--brain-mask-dir", default=None, metavar="DIR",
                     help="take each item's brain mask from this derivatives folder: DIR/sub-<label>/[ses-<label>/]"
                          "anat/<source entities>_desc-brain_mask.nii[.gz] on the source's grid (0/1, labels > 0 or "
                          "probabilities > 0.5 = brain), "
                          "e.g. fMRIPrep's or this App's own after correction; overrides --brain-mask")
    app.add_argument("--batch-size", type=int, default=8, help="slices per forward pass (default: 8)")
    app.add_argument("--jobs", type=int, default=1,
                     help="items processed in parallel, one process each (default: 1); on a cluster, "
                          "prefer one participant per job (docs/cohorts.md)")
    app.add_argument("--skip-existing", action=argparse.BooleanOptionalAction, default=True,
                     help="skip items already done for the same request (the same input and reference files, "
                          "model, brain mask, device and precision), so an interrupted run resumes (default: on; "
                          "--no-skip-existing redoes everything)")
    app.add_argument("--no-report", action="store_true", help="do not write report.html (participant level)")
    app.add_argument("--quiet", action="store_true", help="no progress bar")


@dataclass(frozen=True)
class AppOptions:
    """What every worker needs (picklable)."""

    bids_dir: Path
    output_dir: Path
    direction: str
    model_path: Path
    model_id: str
    model_sha256: str
    device: str = "auto"
    batch_size: int = 8
    precision: str | None = None
    skip_existing: bool = True
    brain_mask: str = "auto"
    resolved_device: str = ""       # what 'auto' became on this machine: the skip key uses it
    resolved_precision: str = ""
    brain_mask_dir: Path | None = None
    engine: str = "auto"


@dataclass
class ItemResult:
    label: str
    status: str                       # done | skipped | failed
    seconds: float = 0.0
    metrics: dict | None = None
    message: str = ""
    warnings: list = field(default_factory=list)


# -- one item -----------------------------------------------------------------------------------

def _bids_uri(path: Path, root: Path) -> str:
    """``bids:raw:<path relative to root>``; both are taken as absolute paths without resolving links
    (a dataset of symlinks, e.g. DataLad/git-annex, keeps its own names)."""
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    return f"bids:raw:{Path(relative).as_posix()}"


#: The BIDS sidecar's spelling of :attr:`MRISynthesisLib.pipeline.SynthesisResult.precision`.
PRECISION_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def sidecar_metrics(score) -> dict:
    """The sidecar's ``Metrics`` of a :func:`MRISynthesisLib.metrics.score` result."""
    conventions = score.conventions
    return {"BrainMAE": float(score["mae"]), "BrainPSNR": float(score["psnr"]), "BrainSSIM": float(score["ssim"]),
            "Conventions": {"reference": conventions["reference"], "mask": conventions["mask"],
                            "mask_voxels": conventions["mask_voxels"], "data_range": conventions["data_range"],
                            "ssim": conventions["ssim"], "pooling": "per volume"}}


def sidecar_precision(precision: str) -> str:
    """'float32', 'bfloat16 + channels_last', ... for the pipeline's 'fp32', 'bf16 + channels_last'."""
    name, _, rest = precision.partition(" ")
    return " ".join([PRECISION_NAMES.get(name, name)] + ([rest] if rest else []))


def request_key(item: BidsItem, options: AppOptions) -> dict:
    """What an item's output depends on: the content of its input files and every option that
    changes the result. ``--skip-existing`` skips an item only when its sidecar holds the same key."""
    from .checkpoint import file_sha256

    return {"ModelSHA256": options.model_sha256,
            "SourceSHA256": file_sha256(item.source),
            "ReferenceSHA256": file_sha256(item.reference) if item.reference is not None else None,
            "BrainMask": options.brain_mask if options.brain_mask_dir is None else "given",
            "BrainMaskSHA256": (file_sha256(find_brain_mask(item, options.brain_mask_dir))
                                if options.brain_mask_dir is not None else None),
            "Device": options.resolved_device or options.device,
            "Precision": options.resolved_precision or options.precision or "auto"}


def _previous_result(paths, key: dict, label: str, source_uri: str) -> ItemResult | None:
    """The result recorded by an earlier run for the same request, or ``None`` (then the item is done
    again: missing or unreadable files, another request, or a sidecar that is not ours as written)."""
    if not (paths.image.exists() and paths.sidecar.exists()):
        return None
    try:
        previous = json.loads(paths.sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(previous, dict) or previous.get("Request") != key or previous.get("Sources") != [source_uri]:
        return None
    metrics, notes = previous.get("Metrics"), previous.get("Warnings")
    numbers_ok = metrics is None or (isinstance(metrics, dict) and all(
        isinstance(metrics.get(name), (int, float, type(None))) for name in ("BrainMAE", "BrainPSNR", "BrainSSIM")))
    if not numbers_ok or not (isinstance(notes, list) and all(isinstance(n, str) for n in notes)):
        return None
    return ItemResult(label, "skipped", metrics=metrics, warnings=notes)


def process_item(item: BidsItem, options: AppOptions, synthesizers) -> ItemResult:
    """Synthesize one item and write its derivatives; never raises for a bad item (its failure is
    returned, and recorded on disk when that is possible). ``synthesizers``: the process's
    :class:`MRISynthesisLib.pipeline.SynthesizerFactory` (a one-model cache)."""
    start = time.monotonic()
    paths = derivative_paths(item, options.output_dir, options.direction)
    failure_record = paths.figures / f"{paths.stem}{FAILURE_SUFFIX}"
    try:
        key = request_key(item, options)
        if options.skip_existing:
            previous = _previous_result(paths, key, item.label, _bids_uri(item.source, options.bids_dir))
            if previous is not None:
                return previous
        return _synthesize_item(item, options, synthesizers, paths, failure_record, start, key)
    except Exception as error:  # one item's failure must not stop the cohort
        message = _one_line(error)
        try:
            failure_record.parent.mkdir(parents=True, exist_ok=True)
            _write_json(failure_record, {"Source": _bids_uri(item.source, options.bids_dir), "Error": message,
                                         "SoftwareVersion": __version__})
        except Exception as record_error:  # noqa: BLE001 - the item is reported failed either way
            message += f" (its failure record could not be written: {_one_line(record_error)})"
        return ItemResult(item.label, "failed", time.monotonic() - start, message=message)


def _one_line(error: BaseException) -> str:
    """Our errors as they are; another error's message after its type's name."""
    message = first_line(error, limit=10_000)
    if not isinstance(error, (MRISynthesisError, MemoryError)) and str(error).strip():
        message = f"{type(error).__name__}: {message}"
    return message


def _synthesize_item(item, options, synthesizers, paths, failure_record, start, key) -> ItemResult:
    from .pipeline import SynthesisRequest, run

    source_contrast, target_contrast = SUFFIXES[options.direction]
    # the parent's resolution of 'auto' (recorded in the skip key), so that every worker uses it
    precision = options.resolved_precision or options.precision or "auto"
    source, brain_mask, given_mask = item.source, options.brain_mask, None
    if options.brain_mask_dir is not None:
        source, brain_mask, given_mask = _with_given_mask(item, options.brain_mask_dir)
    request = SynthesisRequest(source, model=options.model_path, direction=options.direction,
                               device=options.device, precision=precision, batch_size=options.batch_size,
                               brain_mask=brain_mask, reference=item.reference, engine=options.engine)
    result = run(request, synthesizers=synthesizers)
    metrics, reference = None, None
    if result.score is not None:
        metrics = dict(sidecar_metrics(result.score), Reference=_bids_uri(item.reference, options.bids_dir))
        reference = result.input.with_array(result.score.reference)
    paths.image.parent.mkdir(parents=True, exist_ok=True)
    chosen = result.brain_mask
    write_figures(paths.figures, paths.stem, result.input, result.synthetic, reference,
                  mask=chosen.mask if chosen.source in ("extracted", "given") else None)
    _write_image_and_mask(item, options, paths, result, given_mask)
    metadata = result.metadata
    sidecar = {
        "Description": f"Synthetic {target_contrast} image computed from the {source_contrast} image by MRISynthesis. "
                       f"{NOT_FOR_DIAGNOSIS}",
        "Sources": [_bids_uri(item.source, options.bids_dir)],
        "SourceContrast": source_contrast, "TargetContrast": target_contrast, "Direction": options.direction,
        "ModelId": metadata.model_id, "ModelArchitecture": metadata.architecture,
        "ModelSHA256": options.model_sha256, "SoftwareName": "MRISynthesis", "SoftwareVersion": __version__,
        "Device": result.device, "Precision": sidecar_precision(result.precision), "Engine": result.engine,
        "BrainMask": chosen.source,
        "BrainMaskImage": paths.mask.relative_to(options.output_dir).as_posix(),
        "Reference": _bids_uri(item.reference, options.bids_dir) if item.reference is not None else None,
        "IntensityUnits": metadata.output_units,
        "InputNormalisation": metadata.normalisation,
        "Geometry": "the source image's voxel grid and affine, unchanged",
        "Warnings": result.warnings,
        "Metrics": metrics,
        "NotForDiagnosis": True,
        "Request": key,
    }
    _write_json(paths.sidecar, sidecar)  # written last: its presence marks the item as finished
    if failure_record.exists():
        os.remove(failure_record)
    return ItemResult(item.label, "done", time.monotonic() - start, metrics, warnings=result.warnings)


def _with_given_mask(item: BidsItem, mask_dir: Path):
    """``(source volume, mask array, mask path)`` for ``--brain-mask-dir``: the item's mask, read and
    checked against the source's grid (errors name the mask file)."""
    from .io import load_volume
    from .pipeline import load_brain_mask_file

    path = find_brain_mask(item, mask_dir)
    volume = load_volume(item.source)
    return volume, load_brain_mask_file(path, volume, option=f"brain mask {path.name}",
                                        other_name="the source image"), path


def _write_image_and_mask(item, options, paths, result, given_mask) -> None:
    """The synthetic image and the brain mask it was made in (1 = brain, the source's grid), all or
    nothing; a mask read from this very derivative (``--brain-mask-dir OUTPUT_DIR``) is left as it is."""
    import numpy as np

    from .io import check_output_path, write_outputs

    inputs = [item.source] + [p for p in (item.reference, given_mask) if p is not None]
    writers = [(check_output_path(paths.image, inputs), result.synthetic)]
    if given_mask is None or os.path.abspath(given_mask) != os.path.abspath(paths.mask):
        mask = result.input.with_array(result.mask_used().astype(np.float32))
        writers.append((check_output_path(paths.mask, inputs), mask))
    write_outputs(writers)
    _write_json(paths.mask_sidecar, {
        "Type": "Brain", "Sources": [_bids_uri(item.source, options.bids_dir)],
        "Description": {"skull-stripped input": "the source's non-zero voxels (it is skull-stripped)",
                        "extracted": "brain extracted automatically (deepbet) from the whole-head source",
                        "none": "no brain extraction: the automatic foreground (head) mask",
                        "given": f"given with --brain-mask-dir: {given_mask}"}.get(result.brain_mask.source,
                                                                                  result.brain_mask.source),
        "BrainMask": result.brain_mask.source, "SoftwareName": "MRISynthesis", "SoftwareVersion": __version__})


def _write_json(path: Path, data) -> None:
    from .atomic import atomic_path

    with atomic_path(path, suffix=".json") as tmp, open(tmp, "w", encoding="utf-8") as stream:
        json.dump(data, stream, indent=2, default=float)
        stream.write("\n")


# -- many items ---------------------------------------------------------------------------------

def _synthesizers(threads: int | None = None):
    """The synthesizer factory of one process: a one-model cache (the model loads at the first item
    that needs it, so a fully skipped run loads nothing); ``threads``: torch threads of this process."""
    from .pipeline import SynthesizerCache

    if threads:
        import torch

        torch.set_num_threads(threads)
    return SynthesizerCache()


_WORKER = None


def _init_worker(options: AppOptions, threads: int) -> None:
    global _WORKER
    _WORKER = (options, _synthesizers(threads))


def _work(item: BidsItem) -> ItemResult:
    options, synthesizers = _WORKER
    return process_item(item, options, synthesizers)


def run_items(items, options: AppOptions, jobs: int = 1, progress: bool = True) -> list[ItemResult]:
    """Process ``items`` with ``jobs`` processes; results in the order of ``items``."""
    from tqdm import tqdm

    bar = tqdm(total=len(items), unit="item", desc="participants", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    results: dict[int, ItemResult] = {}
    try:
        if jobs <= 1 or len(items) <= 1:
            synthesizers = _synthesizers()
            for index, item in enumerate(items):
                bar.set_postfix_str(item.label)
                results[index] = process_item(item, options, synthesizers)
                bar.update(1)
        else:
            results = _run_pool(items, options, jobs, bar)
    finally:
        bar.close()
    return [results[i] for i in range(len(items))]


def _run_pool(items, options, jobs, bar) -> dict:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cpus // jobs)  # the CPUs this process may use (a cluster job's share), split
    results = {}
    # spawn: a fresh interpreter per worker (forking a process that holds torch threads is unsafe)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(options, threads)) as pool:
        futures = {pool.submit(_work, item): index for index, item in enumerate(items)}
        for future in as_completed(futures):
            index = futures[future]
            try:
                results[index] = future.result()
            except BrokenProcessPool:
                results[index] = ItemResult(items[index].label, "failed",
                                            message="its worker process died (out of memory?); run again to resume")
            bar.set_postfix_str(items[index].label)
            bar.update(1)
    return results


def format_summary(results: list[ItemResult]) -> str:
    """The table printed at the end of a run."""
    def number(metrics, name, digits):
        value = metrics.get(name) if isinstance(metrics, dict) else None
        return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"

    width = max([len("item")] + [len(r.label) for r in results])
    lines = [f"{'item':{width}}  {'status':7}  {'time':>6}  {'MAE':>6}  {'PSNR':>6}  {'SSIM':>6}  note",
             "-" * (width + 50)]
    for r in results:
        note = r.message or ("; ".join(r.warnings) if r.warnings else "")
        seconds = f"{r.seconds:5.1f}s" if r.status == "done" else "-"
        lines.append(f"{r.label:{width}}  {r.status:7}  {seconds:>6}  {number(r.metrics, 'BrainMAE', 3):>6}  "
                     f"{number(r.metrics, 'BrainPSNR', 2):>6}  {number(r.metrics, 'BrainSSIM', 3):>6}  {note}")
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    lines.append(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed")
    return "\n".join(lines)


# -- the command --------------------------------------------------------------------------------

def _check_folders(bids_dir: Path, output_dir: Path) -> None:
    if not bids_dir.is_dir():
        raise InputError(f"BIDS folder not found: {bids_dir}")
    resolved_bids, resolved_out = bids_dir.resolve(), output_dir.resolve()
    if resolved_out == resolved_bids or (resolved_out.is_relative_to(resolved_bids)
                                         and resolved_out.relative_to(resolved_bids).parts[0].startswith("sub-")):
        raise InputError(f"OUTPUT_DIR {output_dir} must not be BIDS_DIR or inside one of its sub-* folders "
                         "(BIDS_DIR/derivatives/<name> is fine)")


def _create_output(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create OUTPUT_DIR {output_dir}: {error.strerror or error}") from None
    if not os.access(output_dir, os.W_OK):
        raise OutputError(f"OUTPUT_DIR is not writable: {output_dir}")


def main(args) -> int:
    """Run the ``bids`` subcommand from parsed arguments; returns the exit status."""
    from . import catalog
    from .checkpoint import file_sha256, read_metadata

    # absolute, not resolved: `cd study && mrisynthesis bids . OUT participant` and symlinked folders
    bids_dir, output_dir = Path(os.path.abspath(args.bids_dir)), Path(os.path.abspath(args.output_dir))
    _check_folders(bids_dir, output_dir)
    check_report_is_ours(output_dir)
    if args.analysis_level == "group":
        if not (output_dir / "dataset_description.json").is_file():
            raise InputError(f"{output_dir} holds no MRISynthesis derivatives; run the participant level first")
        report = write_report(output_dir)
        print(f"wrote {report}", file=sys.stderr)
        return 0
    if args.jobs < 1:
        raise InputError(f"--jobs must be at least 1, got {args.jobs}")
    if args.brain_mask_dir is not None and not Path(args.brain_mask_dir).is_dir():
        raise InputError(f"--brain-mask-dir folder not found: {args.brain_mask_dir}")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    model_path = catalog.resolve_model(args.model, args.direction)
    from .synthesis import check_model_request

    metadata = read_metadata(model_path)
    check_model_request(metadata, args.direction)
    items = discover(bids_dir, args.direction, args.participant_label, args.session_label)
    source_suffix = SUFFIXES[args.direction][0]
    if not items:
        raise InputError(f"no *_{source_suffix}.nii[.gz] images found in {bids_dir} for the selected "
                         "participants/sessions")
    from .device import resolve_precision, select_device

    device = select_device(args.device)  # an unavailable device is a usage error, not one failure per item
    precision = resolve_precision(args.precision, device, args.engine)
    _create_output(output_dir)
    options = AppOptions(bids_dir, output_dir, args.direction, model_path, metadata.model_id,
                         file_sha256(model_path), args.device, args.batch_size,
                         args.precision, args.skip_existing, args.brain_mask, device.type, precision.name,
                         Path(os.path.abspath(args.brain_mask_dir)) if args.brain_mask_dir else None, args.engine)
    ensure_dataset_description(output_dir, dataset_description(bids_dir, args.direction, metadata.model_id,
                                                               options.model_sha256))
    create_once(output_dir / ".bidsignore", BIDSIGNORE)
    print(f"{len(items)} item(s), model {metadata.model_id}, {args.jobs} job(s)", file=sys.stderr)
    try:
        results = run_items(items, options, jobs=args.jobs, progress=not args.quiet)
    except KeyboardInterrupt:
        print("interrupted; finished items are kept: run the same command again to resume", file=sys.stderr)
        return 130
    print(format_summary(results))
    if not args.no_report:
        print(f"wrote {write_report(output_dir)}", file=sys.stderr)
    print(NOT_FOR_DIAGNOSIS, file=sys.stderr)
    return 1 if any(r.status == "failed" for r in results) else 0
