"""One synthesis pipeline for every front end (MRISynthesisLib.pipeline): the command line, the
BIDS App and the Slicer worker turn their inputs into the same request and get the same result,
the same warnings and the same scores; the output file records its provenance."""

import json
import re
import warnings

import nibabel as nib
import numpy as np
import pytest
from phantoms import affine_for, head_phantom

from MRISynthesisLib import pipeline
from MRISynthesisLib.cli import main
from MRISynthesisLib.errors import Cancelled, InputError
from MRISynthesisLib.io import load_volume, read_provenance
from MRISynthesisLib.pipeline import SynthesisRequest, run, volume_sha256

AFFINE = affine_for("LPS", spacing=(0.9, 0.9, 2.0))


@pytest.fixture
def pair(tmp_path):
    """A phantom T1 and its registered 'real T2' (another phantom on the same grid)."""
    t1, t2 = tmp_path / "t1.nii.gz", tmp_path / "t2.nii.gz"
    nib.save(nib.Nifti1Image(head_phantom((30, 34, 16)), AFFINE), str(t1))
    nib.save(nib.Nifti1Image(head_phantom((30, 34, 16), seed=3), AFFINE), str(t2))
    return t1, t2


def _request(t1, t2, checkpoint):
    return SynthesisRequest(str(t1), model=str(checkpoint), device="cpu", precision="fp32", reference=str(t2))


def _through_cli(tmp_path, t1, t2, checkpoint, capsys):
    output = tmp_path / "cli.nii.gz"
    code = main(["synthesize", str(t1), "-o", str(output), "--model", str(checkpoint), "--device", "cpu",
                 "--precision", "fp32", "--reference", str(t2), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    warnings_ = [line[len("warning: "):] for line in captured.err.splitlines() if line.startswith("warning: ")]
    mae = float(re.search(r"^MAE\s+(\S+)", captured.out, re.M).group(1))
    return load_volume(output), warnings_, mae, output


def _through_bids(tmp_path, t1, t2, checkpoint, capsys):
    bids, out = tmp_path / "bids", tmp_path / "derivatives"
    anat = bids / "sub-01" / "anat"
    anat.mkdir(parents=True)
    (anat / "sub-01_T1w.nii.gz").write_bytes(t1.read_bytes())
    (anat / "sub-01_T2w.nii.gz").write_bytes(t2.read_bytes())
    code = main(["bids", str(bids), str(out), "participant", "--model", str(checkpoint), "--device", "cpu",
                 "--precision", "fp32", "--quiet", "--no-report"])
    capsys.readouterr()
    assert code == 0
    image = out / "sub-01" / "anat" / "sub-01_desc-synthetic_T2w.nii.gz"
    sidecar = json.loads(image.with_name("sub-01_desc-synthetic_T2w.json").read_text())
    return load_volume(image), sidecar["Warnings"], round(sidecar["Metrics"]["BrainMAE"], 4), image


def _through_slicer_worker(tmp_path, t1, t2, checkpoint, capsys):
    """The Slicer module's worker process entry point, run in this process: a request file and .npy
    arrays in, JSON lines and .npy arrays out (what the module reads)."""
    from MRISynthesisLib import worker

    source, reference = load_volume(t1), load_volume(t2)
    np.save(tmp_path / "input.npy", source.array)
    np.save(tmp_path / "reference.npy", reference.array)
    (tmp_path / "out").mkdir()
    request = {"input": "input.npy", "affine": source.affine.tolist(), "model": str(checkpoint), "device": "cpu",
               "precision": "fp32", "brain_mask": "auto", "reference": "reference.npy",
               "output_dir": str(tmp_path / "out")}
    (tmp_path / "request.json").write_text(json.dumps(request))
    assert worker.main([str(tmp_path / "request.json")]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    result = next(e for e in events if e["event"] == "result")
    synthetic = source.with_array(np.load(tmp_path / "out" / result["files"]["synthetic"]))
    return synthetic, result["warnings"], round(result["metrics"]["mae"], 4), None


#: Each front end: a function that runs the request of the ``pair`` fixture through it and returns
#: ``(synthetic Volume, warnings, brain MAE to 4 decimals, output file or None)``.
FRONT_ENDS = {"cli": _through_cli, "bids": _through_bids, "slicer worker": _through_slicer_worker}


@pytest.mark.parametrize("front_end", sorted(FRONT_ENDS))
def test_every_front_end_gives_the_pipelines_result_and_warnings(tmp_path, pair, tiny_checkpoint, capsys, front_end):
    t1, t2 = pair
    expected = run(_request(t1, t2, tiny_checkpoint))
    synthetic, warnings_, mae, output = FRONT_ENDS[front_end](tmp_path, t1, t2, tiny_checkpoint, capsys)
    np.testing.assert_array_equal(synthetic.array, expected.synthetic.array)
    assert warnings_ == expected.warnings
    assert mae == pytest.approx(expected.score["mae"], abs=1e-4)
    if output is None:  # the Slicer module keeps the volume in its scene, not in a file
        return
    provenance = read_provenance(output)
    assert provenance["input_sha256"] == volume_sha256(load_volume(t1)) == expected.synthetic.meta[
        "provenance"]["input_sha256"]
    assert (provenance["device"], provenance["precision"], provenance["brain_mask"]) == (
        "cpu", "fp32", "skull-stripped input")
    assert provenance["model_content_sha256"] == expected.metadata.content_sha256
    assert provenance["warnings"] == expected.warnings


def test_input_check_warnings_reach_the_result_the_cli_and_the_provenance(tmp_path, tiny_checkpoint, capsys):
    """Uniform noise is synthesised but flagged, in every front end (Slicer showed nothing before)."""
    noise = tmp_path / "noise.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).uniform(1, 100, (40, 44, 12)).astype(np.float32), AFFINE),
             str(noise))
    result = run(SynthesisRequest(str(noise), model=str(tiny_checkpoint), device="cpu", brain_mask="none"))
    flagged = [w for w in result.warnings if w.startswith(pipeline.INPUT_CHECK_WARNING)]
    assert flagged and flagged == [pipeline.INPUT_CHECK_WARNING + w for w in
                                   result.synthetic.meta["input_check"]["warnings"]]
    output = tmp_path / "out.nii.gz"
    assert main(["synthesize", str(noise), "-o", str(output), "--model", str(tiny_checkpoint), "--device", "cpu",
                 "--brain-mask", "none", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert [f"warning: {w}" for w in flagged] == [line for line in err.splitlines() if "does not look like" in line]
    assert read_provenance(output)["warnings"] == result.warnings


def test_python_warnings_during_synthesis_are_collected_once(pair, tiny_checkpoint, monkeypatch):
    from MRISynthesisLib.synthesis import Synthesizer

    original = Synthesizer.synthesize

    def warning_synthesize(self, volume, *args, **kwargs):
        warnings.warn("input intensities are far from the training data")
        warnings.warn("input intensities are far from the training data")
        return original(self, volume, *args, **kwargs)

    monkeypatch.setattr(Synthesizer, "synthesize", warning_synthesize)
    result = run(SynthesisRequest(str(pair[0]), model=str(tiny_checkpoint), device="cpu"))
    assert result.warnings.count("input intensities are far from the training data") == 1


def test_progress_reports_every_stage_and_cancel_stops_before_anything_is_returned(pair, tiny_checkpoint):
    seen = []
    run(SynthesisRequest(str(pair[0]), model=str(tiny_checkpoint), device="cpu", reference=str(pair[1])),
        progress=lambda stage, done, total: seen.append((stage, done, total)))
    stages = list(dict.fromkeys(stage for stage, _, _ in seen))
    assert stages == ["loading model", "synthesis", "scoring"]  # skull-stripped: no extraction
    assert seen[-2][0] == "synthesis" and seen[-2][1] == seen[-2][2] > 0
    calls = []
    with pytest.raises(Cancelled):
        run(SynthesisRequest(str(pair[0]), model=str(tiny_checkpoint), device="cpu"),
            cancelled=lambda: calls.append(1) or len(calls) > 1)


def test_a_volume_and_a_mask_array_are_accepted_without_files(pair, tiny_checkpoint):
    volume = load_volume(pair[0])
    mask = volume.array > 0
    result = run(SynthesisRequest(volume, model=str(tiny_checkpoint), device="cpu", brain_mask=mask.astype(np.uint8)))
    assert result.brain_mask.source == "given" and np.array_equal(result.mask_used(), mask)
    assert result.synthetic.shape == volume.shape and np.array_equal(result.synthetic.affine, volume.affine)
    assert not result.synthetic.array[~mask].any()


def test_a_reference_on_another_grid_is_a_warning_not_an_error(tmp_path, pair, tiny_checkpoint):
    other = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(head_phantom((30, 34, 16), seed=3), affine_for("RAS")), str(other))
    result = run(SynthesisRequest(str(pair[0]), model=str(tiny_checkpoint), device="cpu", reference=str(other)))
    assert result.score is None and any("another voxel grid" in w for w in result.warnings)


@pytest.mark.parametrize("field, value, message", [
    ("batch_size", 0, "--batch-size must be at least 1"),
    ("direction", "t2-to-t1", "synthesizes t1-to-t2"),
    ("direction", "sideways", "unknown direction"),
])
def test_bad_requests_are_refused_before_the_input_is_read(tmp_path, tiny_checkpoint, field, value, message):
    request = SynthesisRequest(str(tmp_path / "absent.nii.gz"), model=str(tiny_checkpoint), device="cpu")
    setattr(request, field, value)
    with pytest.raises(InputError, match=message):
        run(request)


def test_the_synthesizer_cache_reuses_a_loaded_model(pair, tiny_checkpoint):
    made = []

    def create(*arguments):
        made.append(arguments)
        return pipeline.create_synthesizer(*arguments)

    cache = pipeline.SynthesizerCache(create)
    for batch_size in (4, 2):
        result = run(SynthesisRequest(str(pair[0]), model=str(tiny_checkpoint), device="cpu", batch_size=batch_size),
                     synthesizers=cache)
        assert result.batch_size == batch_size
    assert len(made) == 1


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".nhdr"])
def test_the_output_file_records_what_made_it(tmp_path, pair, tiny_checkpoint, capsys, suffix):
    """Precision, device, brain-mask source and the input's content hash are in the file itself."""
    output = tmp_path / f"out{suffix}"
    assert main(["synthesize", str(pair[0]), "-o", str(output), "--model", str(tiny_checkpoint), "--device", "cpu",
                 "--precision", "fp32", "--quiet"]) == 0, capsys.readouterr().err
    provenance = read_provenance(output)
    assert provenance["input_sha256"] == volume_sha256(load_volume(pair[0]))
    assert provenance["input_sha256_of"] == pipeline.INPUT_HASH_CONVENTION
    assert (provenance["device"], provenance["precision"], provenance["brain_mask"]) == (
        "cpu", "fp32", "skull-stripped input")
    assert provenance["model_id"] == "test-baseline" and "not for diagnosis" in provenance["note"]
    assert "input_check" in provenance and isinstance(provenance["warnings"], list)


def test_the_input_hash_depends_on_voxels_and_geometry_only(pair):
    volume = load_volume(pair[0])
    copy = volume.with_array(volume.array.copy())
    assert volume_sha256(copy) == volume_sha256(volume)
    copy.array[0, 0, 0] += 1
    assert volume_sha256(copy) != volume_sha256(volume)
    moved = type(volume)(volume.array, volume.affine + np.eye(4) * 0)
    moved.affine[0, 3] += 1
    assert volume_sha256(moved) != volume_sha256(volume)


def test_one_pair_scores_the_same_in_evaluate_synthesize_the_bids_app_and_training_validation(
        tmp_path, pair, tiny_checkpoint, capsys):
    """One scoring function (metrics.score, model units): the numbers agree to the last digit."""
    from MRISynthesisLib.preprocessing import brain_mask
    from Training.validation import Validator

    t1, t2 = pair
    expected = run(_request(t1, t2, tiny_checkpoint)).score
    _, _, _, output = _through_cli(tmp_path, t1, t2, tiny_checkpoint, capsys)
    assert main(["evaluate", "--pred", str(output), "--ref", str(t2), "--json", str(tmp_path / "m.json")]) == 0
    capsys.readouterr()
    evaluated = json.loads((tmp_path / "m.json").read_text())
    target = load_volume(t2)
    validated, conventions = Validator((), "t1-to-t2")._score(load_volume(output).array, target,
                                                              brain_mask(target.array))
    for name in ("mae", "psnr", "ssim"):
        assert evaluated[name] == expected[name] == validated[name], name
    assert conventions["normalisation"] == evaluated["conventions"]["normalisation"] == "model-units"
    assert expected.conventions_text().startswith("Inside the mask") and "data range 1" in expected.conventions_text()
