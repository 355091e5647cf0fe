"""The BIDS App: discovery, derivative names, concurrency-safe dataset description, and a run on
real subjects (derivatives, sidecars, metrics, report, resume, --jobs 2, a broken subject)."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import nibabel as nib
import numpy as np
import pytest
from phantoms import affine_for, head_phantom

from MRISynthesisLib.bids import (BidsItem, dataset_description, derivative_paths, discover,
                                  ensure_dataset_description, parse_name)
from MRISynthesisLib.checkpoint import file_sha256
from MRISynthesisLib.cli import main
from MRISynthesisLib.errors import InputError, OutputError
from MRISynthesisLib.io import load_volume

REPO = Path(__file__).resolve().parents[2]


def _nifti(path, array=None, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    array = head_phantom((24, 28, 12)) if array is None else array
    nib.save(nib.Nifti1Image(array, affine_for("LPS") if affine is None else affine), str(path))
    return path


# -- layout -------------------------------------------------------------------------------------

def test_discovery_finds_sessions_entities_and_references(tmp_path):
    for name in ("sub-01/ses-a/anat/sub-01_ses-a_T1w.nii.gz", "sub-01/ses-b/anat/sub-01_ses-b_acq-fast_run-2_T1w.nii",
                 "sub-01/ses-b/anat/sub-01_ses-b_acq-fast_run-2_T2w.nii.gz", "sub-02/anat/sub-02_T1w.nii.gz",
                 "sub-02/anat/sub-02_T2w.nii.gz", "sub-02/anat/sub-02_FLAIR.nii.gz", "sub-02/anat/sub-02_T1w.json",
                 "sub-02/anat/sub-03_T1w.nii.gz", "sub-03/anat/sub-03_T2w.nii.gz"):
        _nifti(tmp_path / name) if name.endswith((".nii", ".nii.gz")) else (tmp_path / name).write_text("{}")
    items = discover(tmp_path, "t1-to-t2")
    assert [(i.subject, i.session, i.label) for i in items] == [
        ("01", "a", "sub-01 ses-a"), ("01", "b", "sub-01 ses-b acq-fast run-2"), ("02", None, "sub-02")]
    assert items[0].reference is None
    assert items[1].reference.name == "sub-01_ses-b_acq-fast_run-2_T2w.nii.gz"
    assert items[2].reference.name == "sub-02_T2w.nii.gz"
    reverse = discover(tmp_path, "t2-to-t1", participants=["sub-03", "01"])
    assert [i.source.name for i in reverse] == ["sub-01_ses-b_acq-fast_run-2_T2w.nii.gz", "sub-03_T2w.nii.gz"]
    assert [i.label for i in discover(tmp_path, "t1-to-t2", sessions=["ses-b"])] == ["sub-01 ses-b acq-fast run-2"]
    with pytest.raises(InputError, match="participant.*not found.*07"):
        discover(tmp_path, "t1-to-t2", participants=["07"])
    with pytest.raises(InputError, match="not a BIDS label"):
        discover(tmp_path, "t1-to-t2", participants=["../01"])


def test_derivative_names_follow_the_bids_schema(tmp_path):
    """Every output name is a valid derivative name of the official schema (bidsschematools)."""
    schema_tools = pytest.importorskip("bidsschematools.schema")
    schema = schema_tools.load_schema()
    rule = schema.rules.files.deriv.imaging.anat_nonparametric_volumetric
    order = [schema.objects.entities[e].name for e in schema.rules.entities]
    allowed = {schema.objects.entities[e].name for e in rule.entities}
    item = BidsItem("01", "2", (("sub", "01"), ("ses", "2"), ("acq", "mprage"), ("run", "1")),
                    Path("sub-01_ses-2_acq-mprage_run-1_T1w.nii.gz"), None)
    for direction, suffix in (("t1-to-t2", "T2w"), ("t2-to-t1", "T1w")):
        paths = derivative_paths(item, tmp_path, direction)
        assert paths.image == tmp_path / "sub-01/ses-2/anat/sub-01_ses-2_acq-mprage_run-1_desc-synthetic_" \
                                         f"{suffix}.nii.gz"
        assert paths.sidecar.name == paths.image.name.replace(".nii.gz", ".json")
        entities, parsed_suffix, extension = parse_name(paths.image.name)
        keys = [k for k, _ in entities]
        assert set(keys) <= allowed and parsed_suffix in rule.suffixes and extension in rule.extensions
        assert keys == sorted(keys, key=order.index)  # the schema's entity order
    # the inputs are valid raw BIDS names for the schema's own validator
    regexes, _ = pytest.importorskip("bidsschematools.rules").regexify_all()
    validator = pytest.importorskip("bidsschematools.validator")
    result = validator.validate_all(["/sub-01/ses-2/anat/" + item.source.name], regexes)
    assert result["path_tracking"] == [] and result["match_listing"][0]["acquisition"] == "mprage"


def test_dataset_description_is_created_once_by_concurrent_processes(tmp_path):
    """Eight processes start together (like a job array): one file, complete, no temporaries."""
    description = dataset_description(tmp_path, "t1-to-t2", "model-a", "ab" * 32)
    out = tmp_path / "out"
    out.mkdir()
    go = tmp_path / "go"
    code = ("import json, sys, time, pathlib\n"
            "from MRISynthesisLib.bids import ensure_dataset_description\n"
            "go = pathlib.Path(sys.argv[1])\n"
            "while not go.exists(): time.sleep(0.001)\n"
            "ensure_dataset_description(sys.argv[2], json.loads(sys.argv[3]))\n")
    processes = [subprocess.Popen([sys.executable, "-c", code, str(go), str(out), json.dumps(description)],
                                  cwd=REPO, stderr=subprocess.PIPE) for _ in range(8)]
    go.touch()
    errors = [p.communicate(timeout=60)[1].decode() for p in processes]
    assert [p.returncode for p in processes] == [0] * 8, errors
    assert os.listdir(out) == ["dataset_description.json"]
    assert json.loads((out / "dataset_description.json").read_text()) == description
    other = dataset_description(tmp_path, "t1-to-t2", "model-b", "cd" * 32)
    with pytest.raises(OutputError, match="derivatives of model model-a"):
        ensure_dataset_description(out, other)


def test_usage_errors_are_one_line_and_write_nothing(tmp_path, tiny_checkpoint, capsys):
    _nifti(tmp_path / "bids/sub-01/anat/sub-01_T1w.nii.gz")
    base = ["bids", str(tmp_path / "bids")]
    cases = [
        (base + [str(tmp_path / "out"), "participant", "--participant-label", "02"], "not found"),
        (base + [str(tmp_path / "bids"), "participant"], "must not be BIDS_DIR"),
        (["bids", str(tmp_path / "absent"), str(tmp_path / "out"), "participant"], "BIDS folder not found"),
        (base + [str(tmp_path / "out"), "participant", "--direction", "t2-to-t1", "--model", str(tiny_checkpoint)],
         "synthesizes t1-to-t2"),
        (base + [str(tmp_path / "out"), "participant", "--jobs", "0"], "--jobs"),
        (base + [str(tmp_path / "out"), "group"], "run the participant level first"),
    ]
    for argv, pattern in cases:
        assert main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and pattern in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_bids_app_on_phantoms_records_warnings_and_grid_mismatch(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    """Without real data: warnings raised during synthesis reach the sidecar, the summary and the
    report; a reference on another grid gives a warning instead of metrics."""
    import warnings

    from MRISynthesisLib.synthesis import Synthesizer

    bids = tmp_path / "bids"
    _nifti(bids / "sub-01/anat/sub-01_T1w.nii.gz")
    _nifti(bids / "sub-01/anat/sub-01_T2w.nii.gz", head_phantom((24, 28, 12), seed=3))
    _nifti(bids / "sub-02/anat/sub-02_T1w.nii.gz")
    _nifti(bids / "sub-02/anat/sub-02_T2w.nii.gz", affine=affine_for("RAS"))
    original = Synthesizer.synthesize

    def warning_synthesize(self, volume, *args, **kwargs):
        warnings.warn("input intensities are far from the training data")
        return original(self, volume, *args, **kwargs)

    monkeypatch.setattr(Synthesizer, "synthesize", warning_synthesize)
    out = tmp_path / "out"
    assert main(["bids", str(bids), str(out), "participant", "--model", str(tiny_checkpoint), "--quiet"]) == 0
    summary = capsys.readouterr().out
    assert "2 done, 0 skipped, 0 failed" in summary and "far from the training data" in summary
    first = json.loads((out / "sub-01/anat/sub-01_desc-synthetic_T2w.json").read_text())
    second = json.loads((out / "sub-02/anat/sub-02_desc-synthetic_T2w.json").read_text())
    assert "input intensities are far from the training data" in first["Warnings"]
    assert 0 < first["Metrics"]["BrainMAE"] < 1 and first["Metrics"]["Conventions"]["data_range"] == 1.0
    assert second["Metrics"] is None and any("another voxel grid" in w for w in second["Warnings"])
    report = (out / "report.html").read_text()
    assert report.count("far from the training data") == 2 and "another voxel grid" in report
    assert (out / ".bidsignore").read_text().splitlines()[0] == "report.html"
    with pytest.raises(SystemExit):
        main(["bids", "--help"])
    assert "BIDS App" in capsys.readouterr().out


# -- a run on real subjects -------------------------------------------------------------------

def _real_dataset(root: Path, shared_data: Path, broken: bool = False) -> Path:
    """sub-01: two sessions with a T1w each; sub-02: T1w and T2w (co-registered); sub-03: broken."""
    def pick(folder, contrast):
        return next(p for p in sorted((shared_data / "paired" / folder).iterdir()) if f".{contrast}." in p.name)

    files = {
        "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz": pick("CBICA-301D00252", "T1"),
        "sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz": pick("CBICA-301D00252", "T1"),
        "sub-02/anat/sub-02_T1w.nii.gz": pick("CBICA-301D00262", "T1"),
        "sub-02/anat/sub-02_T2w.nii.gz": pick("CBICA-301D00262", "T2"),
    }
    for name, source in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, root / name)
    if broken:
        (root / "sub-03/anat").mkdir(parents=True)
        (root / "sub-03/anat/sub-03_T1w.nii.gz").write_bytes((root / "sub-02/anat/sub-02_T1w.nii.gz").read_bytes()[:3000])
    (root / "dataset_description.json").write_text(json.dumps({"Name": "test cohort", "BIDSVersion": "1.10.0"}))
    return root


def _digests(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.targets = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.targets.append(attrs["src"])
        if tag == "a" and not attrs.get("href", "#").startswith("#"):
            self.targets.append(attrs["href"])


STEMS = ("sub-01/ses-1/anat/sub-01_ses-1_desc-synthetic_T2w", "sub-01/ses-2/anat/sub-01_ses-2_desc-synthetic_T2w",
         "sub-02/anat/sub-02_desc-synthetic_T2w")


@pytest.mark.realdata
def test_bids_app_on_real_subjects(shared_data, tiny_checkpoint, tmp_path, capsys):
    import torch

    # --jobs N gives each worker its share of the CPU threads; the --jobs 1 run below uses one thread
    # too, so that the two runs are compared at the same arithmetic (thread counts change rounding).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _check_bids_app_on_real_subjects(shared_data, tiny_checkpoint, tmp_path, capsys)
    finally:
        torch.set_num_threads(threads)


def _check_bids_app_on_real_subjects(shared_data, tiny_checkpoint, tmp_path, capsys):
    from MRISynthesisLib.device import cpu_has_native_bf16

    expected_precision = "bfloat16 + channels_last" if cpu_has_native_bf16() else "float32"
    bids = _real_dataset(tmp_path / "bids", shared_data)
    inputs_before = _digests(bids)
    out = tmp_path / "derivatives" / "mrisynthesis"
    argv = ["bids", str(bids), str(out), "participant", "--model", str(tiny_checkpoint), "--quiet"]
    assert main(argv) == 0
    summary = capsys.readouterr().out
    assert "3 done, 0 skipped, 0 failed" in summary

    description = json.loads((out / "dataset_description.json").read_text())
    generated = description["GeneratedBy"][0]
    assert description["DatasetType"] == "derivative" and "test cohort" in description["Name"]
    assert (generated["Name"], generated["ModelId"]) == ("MRISynthesis", "test-baseline")
    assert generated["ModelSHA256"] == file_sha256(tiny_checkpoint)

    for stem in STEMS:
        image, sidecar = load_volume(out / f"{stem}.nii.gz"), json.loads((out / f"{stem}.json").read_text())
        source_name = stem.split("/")[-1].replace("_desc-synthetic_T2w", "_T1w.nii.gz")
        source = load_volume(bids / Path(stem).parent / source_name)
        assert image.shape == source.shape and np.array_equal(image.affine, source.affine)
        assert image.array.max() > 0.1 and image.array.min() == 0
        assert sidecar["Sources"] == [f"bids:raw:{Path(stem).parent.as_posix()}/{source_name}"]
        assert sidecar["ModelSHA256"] == generated["ModelSHA256"] and sidecar["Direction"] == "t1-to-t2"
        # --precision auto depends on the CPU: bfloat16 where it is native (AVX-512 BF16, AMX), else float32
        assert sidecar["Device"] == "cpu" and sidecar["Precision"] == expected_precision and sidecar["NotForDiagnosis"]
        assert sidecar["BrainMask"] == "skull-stripped input"  # left alone: no extraction
        assert "normalised" in sidecar["IntensityUnits"] and sidecar["InputNormalisation"]["high"] == 99.5
    assert json.loads((out / f"{STEMS[0]}.json").read_text())["Metrics"] is None

    # metrics agree with training validation's own scoring (an independent implementation)
    from MRISynthesisLib.preprocessing import brain_mask
    from Training.validation import Validator

    metrics = json.loads((out / f"{STEMS[2]}.json").read_text())["Metrics"]
    target = load_volume(bids / "sub-02/anat/sub-02_T2w.nii.gz")
    synthetic = load_volume(out / f"{STEMS[2]}.nii.gz").array
    expected, _ = Validator((), "t1-to-t2")._score(synthetic, target, brain_mask(target.array))
    assert metrics["Reference"] == "bids:raw:sub-02/anat/sub-02_T2w.nii.gz"
    assert metrics["BrainMAE"] == pytest.approx(expected["mae"], abs=1e-6)
    assert metrics["BrainPSNR"] == pytest.approx(expected["psnr"], abs=1e-4)
    assert metrics["BrainSSIM"] == pytest.approx(expected["ssim"], abs=1e-6)

    report = (out / "report.html").read_text()
    links = _Links()
    links.feed(report)
    local = [unquote(urlparse(t).path) if t.startswith("file:") else str(out / t) for t in links.targets]
    assert all(Path(path).is_file() for path in local), links.targets
    assert str(bids / "sub-02/anat/sub-02_T1w.nii.gz") in local  # the source, in the raw dataset
    images = [t for t in links.targets if t.endswith(".png")]
    assert len(set(images)) == 2 + 2 + 4  # input+synthetic per session of sub-01; + real + error for sub-02
    assert "Synthetic images are not for diagnosis" in report and f"{metrics['BrainMAE']:.3f}" in report
    assert _digests(bids) == inputs_before  # inputs untouched

    # a second run skips everything and changes nothing
    outputs_before = _digests(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    assert main(argv) == 0
    assert "0 done, 3 skipped, 0 failed" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")} == mtimes
    assert _digests(out) == outputs_before

    # --jobs 2, with a broken subject added: it fails alone, the others match --jobs 1 exactly
    broken = _real_dataset(tmp_path / "bids2", shared_data, broken=True)
    out2 = tmp_path / "out2"
    assert main(["bids", str(broken), str(out2), "participant", "--model", str(tiny_checkpoint), "--quiet",
                 "--jobs", "2"]) == 1
    summary = capsys.readouterr().out
    assert "3 done, 0 skipped, 1 failed" in summary
    assert any(line.startswith("sub-03") and "failed" in line and "cannot read" in line
               for line in summary.splitlines()), summary
    for subject in ("sub-01", "sub-02"):  # images, sidecars and pictures, byte for byte
        assert _digests(out2 / subject) == _digests(out / subject)
    assert not (out2 / "sub-03/anat").exists()
    failure = json.loads((out2 / "sub-03/figures/sub-03_desc-synthetic_T2w_failure.json").read_text())
    assert "cannot read" in failure["Error"]
    assert 'id="sub-03_desc-synthetic_T2w"' in (out2 / "report.html").read_text()
    assert not list(out2.rglob(".tmp-*"))


@pytest.mark.realdata
def test_group_level_rebuilds_the_report_from_disk(shared_data, tiny_checkpoint, tmp_path, capsys):
    bids = _real_dataset(tmp_path / "bids", shared_data)
    out = tmp_path / "out"
    for label in ("01", "02"):  # two "array tasks", no report of their own
        assert main(["bids", str(bids), str(out), "participant", "--participant-label", label, "--model",
                     str(tiny_checkpoint), "--quiet", "--no-report"]) == 0
    assert not (out / "report.html").exists()
    assert main(["bids", str(bids), str(out), "group"]) == 0
    report = (out / "report.html").read_text()
    assert all(f'id="{Path(stem).name}"' in report for stem in STEMS)
    assert "3 item(s) done, 0 failed" in report


@pytest.mark.realdata
@pytest.mark.slow
def test_bids_app_extracts_the_brain_of_a_whole_head_scan(shared_data, tiny_checkpoint, tmp_path, capsys):
    """A whole-head T1 (the avg152 template) is brain-extracted before synthesis (issue 14's batch path)."""
    bids = tmp_path / "bids"
    (bids / "sub-01" / "anat").mkdir(parents=True)
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "whole head", "BIDSVersion": "1.9.0"}))
    shutil.copy(shared_data / "templates" / "spm_avg152" / "avg152T1.nii", bids / "sub-01" / "anat" / "sub-01_T1w.nii")
    out = tmp_path / "out"
    for choice, expected in (("auto", "extracted"), ("none", "none")):
        target = out / choice
        assert main(["bids", str(bids), str(target), "participant", "--model", str(tiny_checkpoint), "--quiet",
                     "--no-report", "--brain-mask", choice]) == 0
        sidecar = json.loads((target / "sub-01/anat/sub-01_desc-synthetic_T2w.json").read_text())
        assert sidecar["BrainMask"] == expected
    head = load_volume(out / "none" / "sub-01/anat/sub-01_desc-synthetic_T2w.nii.gz").array > 0
    brain = load_volume(out / "auto" / "sub-01/anat/sub-01_desc-synthetic_T2w.nii.gz").array > 0
    assert 0.2 * head.sum() < brain.sum() < 0.8 * head.sum()  # scalp and skull are background after extraction
    mask = load_volume(out / "auto" / "sub-01/anat/sub-01_desc-brain_mask.nii.gz").array > 0
    assert not (brain & ~mask).any() and mask.sum() < 0.8 * head.sum()  # the extracted mask, as a derivative
    figure = "sub-01/figures/sub-01_desc-synthetic_T2w_input.png"
    assert _cyan_pixels(out / "auto" / figure) > 100 and _cyan_pixels(out / "none" / figure) == 0


# -- hostile datasets and output folders ----------------------------------------------------------

def _phantom_dataset(root: Path, subjects=("01", "02"), reference=True) -> Path:
    for index, label in enumerate(subjects):
        _nifti(root / f"sub-{label}/anat/sub-{label}_T1w.nii.gz", head_phantom((24, 28, 12), seed=index))
        if reference:
            _nifti(root / f"sub-{label}/anat/sub-{label}_T2w.nii.gz", head_phantom((24, 28, 12), seed=10 + index))
    (root / "dataset_description.json").write_text(json.dumps({"Name": "phantoms", "BIDSVersion": "1.10.0"}))
    return root


def _run(bids, out, checkpoint, *extra) -> int:
    return main(["bids", str(bids), str(out), "participant", "--model", str(checkpoint), "--quiet", *extra])


def test_relative_and_symlinked_bids_dir_work(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    """``cd study && mrisynthesis bids . OUT participant``, the usual call, and a symlinked BIDS_DIR."""
    study = _phantom_dataset(tmp_path / "study")
    link = tmp_path / "link"
    link.symlink_to(study, target_is_directory=True)
    monkeypatch.chdir(study)
    for bids, out in ((".", tmp_path / "out-relative"), (str(link), tmp_path / "out-link")):
        assert _run(bids, out, tiny_checkpoint) == 0
        assert "2 done, 0 skipped, 0 failed" in capsys.readouterr().out
        sidecar = json.loads((out / "sub-01/anat/sub-01_desc-synthetic_T2w.json").read_text())
        assert sidecar["Sources"] == ["bids:raw:sub-01/anat/sub-01_T1w.nii.gz"]
        assert sidecar["Metrics"]["Reference"] == "bids:raw:sub-01/anat/sub-01_T2w.nii.gz"


def test_one_items_failure_never_aborts_the_cohort(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    """Even when recording the failure fails too, the item is reported failed and the others finish."""
    from MRISynthesisLib import bids_app

    bids = _phantom_dataset(tmp_path / "bids", subjects=("01", "02", "03"))
    (bids / "sub-02/anat/sub-02_T1w.nii.gz").write_bytes(b"not a NIfTI file")
    original = bids_app._write_json

    def failing_write(path, data):
        if "failure" in Path(path).name:
            raise ValueError("unexpected trouble while recording the failure")
        return original(path, data)

    monkeypatch.setattr(bids_app, "_write_json", failing_write)
    assert _run(bids, tmp_path / "out", tiny_checkpoint) == 1
    summary = capsys.readouterr().out
    assert "2 done, 0 skipped, 1 failed" in summary
    assert any(line.startswith("sub-02") and "cannot read" in line for line in summary.splitlines()), summary


def test_a_report_that_is_not_ours_is_never_overwritten(tmp_path, tiny_checkpoint, capsys):
    bids = _phantom_dataset(tmp_path / "bids", subjects=("01",))
    out = tmp_path / "existing"
    out.mkdir()
    (out / "report.html").write_text("<html><body>my own notes</body></html>")
    for level in ("participant", "group"):
        argv = ["bids", str(bids), str(out), level] + (["--model", str(tiny_checkpoint)] if level == "participant" else [])
        assert main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "report.html" in lines[0] and "not written by MRISynthesis" in lines[0], lines
    assert (out / "report.html").read_text() == "<html><body>my own notes</body></html>"
    assert sorted(os.listdir(out)) == ["report.html"]
    # our own report is rebuilt as usual
    out2 = tmp_path / "ours"
    assert _run(bids, out2, tiny_checkpoint) == 0
    assert _run(bids, out2, tiny_checkpoint) == 0
    assert main(["bids", str(bids), str(out2), "group"]) == 0


@pytest.mark.parametrize("field,value", [("Warnings", None), ("Warnings", "abc"), ("Warnings", 3), ("Sources", None),
                                         ("Sources", "bids:raw:x"), ("Metrics", [1, 2]), ("Metrics", "x"),
                                         ("Metrics", {"BrainMAE": "x"})])
def test_malformed_derivative_json_gives_no_traceback(tmp_path, tiny_checkpoint, capsys, field, value):
    bids = _phantom_dataset(tmp_path / "bids", subjects=("01",))
    out = tmp_path / "out"
    assert _run(bids, out, tiny_checkpoint) == 0
    sidecar_path = out / "sub-01/anat/sub-01_desc-synthetic_T2w.json"
    sidecar = json.loads(sidecar_path.read_text())
    capsys.readouterr()
    for level in ("group", "participant"):
        sidecar[field] = value
        sidecar_path.write_text(json.dumps(sidecar))
        argv = ["bids", str(bids), str(out), level] + (["--model", str(tiny_checkpoint), "--quiet"]
                                                        if level == "participant" else [])
        assert main(argv) == 0
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err
    redone = json.loads(sidecar_path.read_text())  # the participant run redid the item: its sidecar is whole again
    assert isinstance(redone["Warnings"], list) and isinstance(redone["Sources"], list)
    assert redone["Metrics"] is None or isinstance(redone["Metrics"]["BrainMAE"], float)


def test_malformed_warnings_count_as_what_they_hold(tmp_path, tiny_checkpoint, capsys):
    """``"Warnings": "abc"`` is one warning, ``null`` none (the report, group level)."""
    from MRISynthesisLib.qc_report import render_report

    bids = _phantom_dataset(tmp_path / "bids", subjects=("01",), reference=False)
    out = tmp_path / "out"
    assert _run(bids, out, tiny_checkpoint) == 0
    sidecar_path = out / "sub-01/anat/sub-01_desc-synthetic_T2w.json"
    sidecar = json.loads(sidecar_path.read_text())
    for value, count in (("abc", 1), (None, 0), (["a", "b"], 2)):
        sidecar["Warnings"] = value
        sidecar_path.write_text(json.dumps(sidecar))
        report = render_report(out)
        assert f'<td class="num">-</td><td>{count}</td></tr>' in report, report


@pytest.mark.parametrize("generated_by", ["x", [1], None, [{"ModelId": 3}], {"ModelId": "test-baseline"}])
def test_malformed_dataset_description_gives_one_line(tmp_path, tiny_checkpoint, capsys, generated_by):
    bids = _phantom_dataset(tmp_path / "bids", subjects=("01",))
    out = tmp_path / "out"
    assert _run(bids, out, tiny_checkpoint) == 0
    description = json.loads((out / "dataset_description.json").read_text())
    description["GeneratedBy"] = generated_by
    (out / "dataset_description.json").write_text(json.dumps(description))
    capsys.readouterr()
    assert main(["bids", str(bids), str(out), "group"]) == 0  # the report still shows what is on disk
    assert "Traceback" not in capsys.readouterr().err
    assert _run(bids, out, tiny_checkpoint) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "dataset_description.json" in lines[0], lines


@pytest.mark.parametrize("raw,linked", [("javascript:alert(1)", False), (" JaVaScRiPt:alert(1)", False),
                                        ("java\tscript:alert(1)", False), ("data:text/html,x", False),
                                        ("vbscript:x", False), ("file:///data/study", True),
                                        ("https://example.org/study", True), ("../raw", True), ("raw data", True)])
def test_dataset_links_become_hrefs_only_for_safe_schemes(tmp_path, tiny_checkpoint, raw, linked):
    from MRISynthesisLib.qc_report import render_report

    bids = _phantom_dataset(tmp_path / "bids", subjects=("01",), reference=False)
    out = tmp_path / "out"
    assert _run(bids, out, tiny_checkpoint) == 0
    description = json.loads((out / "dataset_description.json").read_text())
    description["DatasetLinks"] = {"raw": raw}
    (out / "dataset_description.json").write_text(json.dumps(description))
    links = _Links()
    links.feed(render_report(out))
    sources = [t for t in links.targets if t.endswith("sub-01_T1w.nii.gz")]
    assert len(sources) == (1 if linked else 0), links.targets
    assert not any(":" in t.split("/")[0] and not t.startswith(("file:", "https:")) for t in links.targets)


def _sidecar(out, subject="01"):
    return json.loads((out / f"sub-{subject}/anat/sub-{subject}_desc-synthetic_T2w.json").read_text())


def test_skip_existing_is_keyed_on_the_inputs_and_every_option(tmp_path, tiny_checkpoint, capsys):
    """A replaced input (even of another shape) or reference, or another --brain-mask or --precision,
    redoes the item; the same request skips it."""
    bids = _phantom_dataset(tmp_path / "bids", subjects=("01",))
    out = tmp_path / "out"
    options = ["--precision", "fp32", "--brain-mask", "none"]

    def run(*extra):
        assert _run(bids, out, tiny_checkpoint, *extra) == 0
        return capsys.readouterr().out

    assert "1 done, 0 skipped" in run(*options)
    assert "0 done, 1 skipped" in run(*options)
    _nifti(bids / "sub-01/anat/sub-01_T1w.nii.gz", head_phantom((20, 30, 14), seed=5))  # another image and shape
    assert "1 done, 0 skipped" in run(*options)
    assert load_volume(out / "sub-01/anat/sub-01_desc-synthetic_T2w.nii.gz").shape == (20, 30, 14)
    assert _sidecar(out)["Metrics"] is None  # the reference is now on another grid
    _nifti(bids / "sub-01/anat/sub-01_T2w.nii.gz", head_phantom((20, 30, 14), seed=6))  # a new reference
    assert "1 done, 0 skipped" in run(*options)
    assert _sidecar(out)["Metrics"]["BrainMAE"] > 0
    assert "1 done, 0 skipped" in run("--precision", "bf16", "--brain-mask", "none")
    assert "1 done, 0 skipped" in run("--precision", "bf16", "--brain-mask", "auto")
    assert "0 done, 1 skipped" in run("--precision", "bf16", "--brain-mask", "auto")
    assert "1 done, 0 skipped" in run("--precision", "bf16", "--brain-mask", "auto", "--no-skip-existing")


def test_cohorts_doc_documents_every_option_of_the_bids_app(capsys):
    import re

    with pytest.raises(SystemExit):
        main(["bids", "--help"])
    options = set(re.findall(r"(--[a-z][a-z-]+)", capsys.readouterr().out)) - {"--help"}
    doc = (REPO / "docs" / "cohorts.md").read_text()
    table = {line.split("|")[1] for line in doc.splitlines() if line.startswith("| `--")}
    missing = [option for option in sorted(options) if not any(f"`{option}" in row for row in table)]
    assert not missing, f"options of 'mrisynthesis bids' missing from docs/cohorts.md's table: {missing}"
    assert "HOOK(" not in doc and "not offered" not in doc


# -- brain masks and the report's cards ------------------------------------------------------------

def _cyan_pixels(png: Path) -> int:
    from skimage.io import imread

    from MRISynthesisLib.qc_report import OUTLINE_RGB

    return int(np.all(imread(str(png))[..., :3] == OUTLINE_RGB, axis=-1).sum())


def test_the_mask_used_is_written_as_a_bids_derivative(tmp_path, tiny_checkpoint):
    from MRISynthesisLib.brain_extraction import choose_brain_mask, mask_used

    bids = _phantom_dataset(tmp_path / "bids", subjects=("01",))
    out = tmp_path / "out"
    assert _run(bids, out, tiny_checkpoint) == 0
    mask = load_volume(out / "sub-01/anat/sub-01_desc-brain_mask.nii.gz")
    source = load_volume(bids / "sub-01/anat/sub-01_T1w.nii.gz")
    assert mask.same_geometry(source) and set(np.unique(mask.array)) == {0.0, 1.0}
    assert np.array_equal(mask.array > 0, mask_used(source, choose_brain_mask(source, "auto")))
    synthetic = load_volume(out / "sub-01/anat/sub-01_desc-synthetic_T2w.nii.gz").array
    assert not synthetic[mask.array == 0].any()
    description = json.loads((out / "sub-01/anat/sub-01_desc-brain_mask.json").read_text())
    assert description["Type"] == "Brain" and description["Sources"] == ["bids:raw:sub-01/anat/sub-01_T1w.nii.gz"]
    assert _sidecar(out)["BrainMaskImage"] == "sub-01/anat/sub-01_desc-brain_mask.nii.gz"
    # a skull-stripped input's mask is its own outline: none is drawn
    assert _cyan_pixels(out / "sub-01/figures/sub-01_desc-synthetic_T2w_input.png") == 0
    schema_tools = pytest.importorskip("bidsschematools.schema")
    rule = schema_tools.load_schema().rules.files.deriv.imaging.anat_mask
    entities, suffix, extension = parse_name("sub-01_ses-2_acq-x_desc-brain_mask.nii.gz")
    assert suffix in rule.suffixes and extension in rule.extensions


def test_masks_are_taken_from_a_derivatives_folder(tmp_path, tiny_checkpoint, capsys):
    """--brain-mask-dir: the item's <entities>_desc-brain_mask is used, drawn on the input picture, part
    of the skip key; a missing one or one on another grid fails that item alone, with its name."""
    bids = _phantom_dataset(tmp_path / "bids", subjects=("01", "02", "03"))
    masks = tmp_path / "masks"
    box = np.zeros((24, 28, 12), np.float32)
    box[6:18, 7:21, 3:9] = 1
    _nifti(masks / "sub-01/anat/sub-01_desc-brain_mask.nii.gz", box)
    _nifti(masks / "sub-02/anat/sub-02_desc-brain_mask.nii.gz", box[:20])
    out = tmp_path / "out"
    assert _run(bids, out, tiny_checkpoint, "--brain-mask-dir", str(masks)) == 1
    summary = capsys.readouterr().out
    assert "1 done, 0 skipped, 2 failed" in summary
    lines = {line.split()[0]: line for line in summary.splitlines() if line.startswith("sub-")}
    assert "sub-02_desc-brain_mask" in lines["sub-02"] and "grid" in lines["sub-02"], summary
    assert "sub-03_desc-brain_mask" in lines["sub-03"], summary
    synthetic = load_volume(out / "sub-01/anat/sub-01_desc-synthetic_T2w.nii.gz").array
    assert synthetic[box > 0].any() and not synthetic[box == 0].any()
    assert _sidecar(out)["BrainMask"] == "given"
    assert np.array_equal(load_volume(out / "sub-01/anat/sub-01_desc-brain_mask.nii.gz").array, box)
    assert _cyan_pixels(out / "sub-01/figures/sub-01_desc-synthetic_T2w_input.png") > 50
    assert _run(bids, out, tiny_checkpoint, "--brain-mask-dir", str(masks), "--participant-label", "01") == 0
    assert "0 done, 1 skipped" in capsys.readouterr().out
    box[6:10] = 0  # a corrected mask redoes the item
    _nifti(masks / "sub-01/anat/sub-01_desc-brain_mask.nii.gz", box)
    assert _run(bids, out, tiny_checkpoint, "--brain-mask-dir", str(masks), "--participant-label", "01") == 0
    assert "1 done, 0 skipped" in capsys.readouterr().out
    # the App's own masks, corrected in place, can be given back: the mask file is never rewritten
    own = out / "sub-01/anat/sub-01_desc-brain_mask.nii.gz"
    before = own.read_bytes()
    assert _run(bids, out, tiny_checkpoint, "--brain-mask-dir", str(out), "--participant-label", "01",
                "--no-skip-existing") == 0
    assert own.read_bytes() == before


def test_error_map_is_not_saturated_and_cards_say_why_there_are_no_metrics(tmp_path, tiny_checkpoint):
    from skimage.io import imread

    from MRISynthesisLib.qc_report import ERROR_WINDOW, write_figures
    from MRISynthesisLib.volume import Volume

    # errors of 0.1 .. 0.9 in normalised units: each gets its own colour, none reaches white
    source = Volume(head_phantom((24, 28, 12)), affine_for("LPS"))
    inside = source.array > 0
    synthetic = source.with_array(inside * 0.95)
    reference = source.with_array(inside * np.clip(0.95 - np.linspace(0.1, 0.9, 24)[:, None, None], 0, 1))
    written = write_figures(tmp_path, "x", source, synthetic, reference)
    error = imread(str(written["error"]))[..., :3].astype(int)
    assert ERROR_WINDOW >= 0.9 and not np.all(error >= 250, axis=-1).any()

    bids = tmp_path / "bids"
    _nifti(bids / "sub-01/anat/sub-01_T1w.nii.gz")
    _nifti(bids / "sub-01/anat/sub-01_T2w.nii.gz", affine=affine_for("RAS"))  # another grid
    _nifti(bids / "sub-02/anat/sub-02_T1w.nii.gz")                           # no real T2w
    out = tmp_path / "out"
    assert _run(bids, out, tiny_checkpoint) == 0
    report = (out / "report.html").read_text()
    cards = {stem: report.split(f'<div class="item" id="{stem}">')[1].split('<div class="item"')[0]
             for stem in ("sub-01_desc-synthetic_T2w", "sub-02_desc-synthetic_T2w")}
    assert "another voxel grid" in cards["sub-01_desc-synthetic_T2w"]
    assert "no real target image" not in cards["sub-01_desc-synthetic_T2w"]
    assert "no real target image" in cards["sub-02_desc-synthetic_T2w"]
