"""The comparison study's tooling: split rule, baselines, aggregation, and a quick end-to-end run."""

import json
from pathlib import Path

import numpy as np
import pytest

from MRISynthesisLib.errors import InputError
from Training.data import Subject
from studies import subject_scoring as evaluate, comparison_protocol as protocol
from Training.baselines import IntensityLookup, inverted_intensities

SOURCES = {"BraTS": 2, "TCGA": 2, "MSLUB": 2, "CBICA": 8, "GLISTR": 1}


def _subjects(counts=SOURCES):
    return [Subject(f"{source}-{i:02d}", Path("t1.nii"), Path("t2.nii"), source=source)
            for source, n in counts.items() for i in range(n)]


# -- protocol ----------------------------------------------------------------------------------

def test_split_puts_every_multi_subject_source_on_the_test_side():
    subjects = _subjects()
    split = protocol.study_split(subjects, seed=42, n_val=2)
    source_of = {s.id: s.source for s in subjects}
    assert sorted(source_of[i] for i in split["test"]) == ["BraTS", "CBICA", "MSLUB", "TCGA"]
    assert len(split["val"]) == 2
    assert "GLISTR-00" in split["train"]  # a single-subject source only trains


def test_split_has_no_subject_on_two_sides_and_covers_all():
    subjects = _subjects()
    split = protocol.study_split(subjects, seed=42, n_val=2)
    ids = split["train"] + split["val"] + split["test"]
    assert len(ids) == len(set(ids)) == len(subjects)


def test_split_is_fixed_by_the_seed_and_ignores_input_order():
    subjects = _subjects()
    first = protocol.study_split(subjects, seed=42)
    assert protocol.study_split(list(reversed(subjects)), seed=42) == first
    others = [protocol.study_split(subjects, seed=seed)["test"] for seed in range(5)]
    assert any(test != first["test"] for test in others)  # the seed matters


def test_trainer_split_of_the_manifest_reproduces_the_validation_side():
    from Training.data import split_subjects

    subjects = _subjects()
    split = protocol.study_split(subjects, seed=42, n_val=2)
    rest = [s for s in subjects if s.id not in split["test"]]
    inner = split_subjects(rest, protocol.validation_fractions(len(rest), 2), seed=42)
    assert inner["val"] == split["val"] and inner["test"] == []


def test_split_without_a_multi_subject_source_is_refused():
    with pytest.raises(InputError, match="no source has two subjects"):
        protocol.study_split(_subjects({"A": 1, "B": 1, "C": 1}))


# -- baselines ---------------------------------------------------------------------------------

def test_inverted_intensities_inside_the_mask_only():
    source = np.array([[0.0, 0.25], [0.9, 1.0]], dtype=np.float32)
    mask = np.array([[True, True], [True, False]])
    np.testing.assert_allclose(inverted_intensities(source, mask), [[1.0, 0.75], [0.1, 0.0]], atol=1e-7)


def test_lookup_maps_bins_to_mean_targets_and_interpolates_between_centres():
    # 4 bins of width 0.25, centres 0.125, 0.375, 0.625, 0.875.
    source = np.array([0.1, 0.2, 0.6, 0.7, 0.5])
    target = np.array([0.8, 0.6, 0.2, 0.4, 1.0])
    mask = np.array([True, True, True, True, False])  # the last voxel is outside: not learned
    lookup = IntensityLookup(bins=4).add(source, target, mask)
    centres, means = lookup.table
    np.testing.assert_allclose(centres, [0.125, 0.625])  # bins 2 and 4 saw no voxel
    np.testing.assert_allclose(means, [0.7, 0.3])
    query = np.array([0.125, 0.375, 0.625, 0.0, 1.0, 0.5])
    inside = np.array([True, True, True, True, True, False])
    # 0.375 is halfway between the two filled centres; beyond them the end values hold.
    np.testing.assert_allclose(lookup.predict(query, inside), [0.7, 0.5, 0.3, 0.7, 0.3, 0.0], atol=1e-6)


def test_lookup_round_trips_through_json_and_refuses_an_empty_table():
    lookup = IntensityLookup(bins=4).add(np.array([0.1, 0.9]), np.array([0.9, 0.1]), np.array([True, True]))
    again = IntensityLookup.from_json(lookup.to_json())
    np.testing.assert_allclose(again.predict(np.array([0.5]), np.array([True])), lookup.predict(np.array([0.5]), np.array([True])))
    with pytest.raises(InputError, match="not seen any training voxel"):
        IntensityLookup(bins=4).predict(np.array([0.5]), np.array([True]))


# -- aggregation -------------------------------------------------------------------------------

def _row(subject, source, mae, psnr):
    metrics = {"mae": mae, "mse": mae**2, "psnr": psnr, "ssim": 0.5, "mi_bits": 1.0}
    return {"subject": subject, "source": source, "mask": metrics, "whole_slice": metrics}


def test_aggregate_gives_mean_and_sample_sd_per_source_and_overall():
    rows = [_row("a1", "A", 0.1, 20.0), _row("a2", "A", 0.3, 24.0), _row("b1", "B", 0.2, 30.0)]
    table = evaluate.aggregate(rows)
    assert table["A"]["mae"]["mean"] == pytest.approx(0.2)
    assert table["A"]["mae"]["sd"] == pytest.approx(np.sqrt(0.02))  # sample SD of 0.1, 0.3
    assert table["A"]["psnr"] == {"mean": pytest.approx(22.0), "sd": pytest.approx(np.sqrt(8.0)), "n": 2}
    assert table["B"]["mae"] == {"mean": pytest.approx(0.2), "sd": None, "n": 1}  # one subject: no SD
    assert table["overall"]["psnr"]["mean"] == pytest.approx(74.0 / 3)
    assert table["overall"]["mae"]["n"] == 3
    assert list(table) == ["A", "B", "overall"]


def test_mean_sd_ignores_infinite_psnr_of_a_perfect_prediction():
    assert evaluate.mean_sd([20.0, float("inf"), 22.0]) == {"mean": 21.0, "sd": pytest.approx(np.sqrt(2.0)), "n": 2}


def test_figures_refuse_subjects_whose_licence_forbids_redistribution(tmp_path):
    from studies.comparison_figures import comparison_grid

    image = np.zeros((16, 16))
    subject = {"id": "CBICA-x", "source": "CBICA", "input": image, "real": image, "mask": image > -1,
               "methods": {"inverted": {"synthetic": image, "relative_error": image}}}
    with pytest.raises(InputError, match="may not appear"):
        comparison_grid(tmp_path / "f.png", [subject], {"inverted": "Inverted"}, "t")
    subject["source"] = "MSLUB"
    assert comparison_grid(tmp_path / "f.png", [subject], {"inverted": "Inverted"}, "t").stat().st_size > 0


# -- end to end --------------------------------------------------------------------------------

QUICK_SUBJECTS = ("CBICA-301D00252", "CBICA-301D00262", "CBICA-301D00293")


@pytest.mark.realdata
@pytest.mark.slow
def test_quick_study_trains_evaluates_writes_results_and_resumes(tmp_path, shared_data):
    from studies.compare_models import main

    out, results = tmp_path / "study", tmp_path / "results.md"
    argv = ["--quick", "--data", str(shared_data / "paired"), "--out", str(out), "--minutes-per-model", "0.05",
            "--families", "ceiling,inverted,lookup,baseline1x1", "--directions", "t1-to-t2",
            "--subjects", ",".join(QUICK_SUBJECTS), "--results", str(results), "--figures", str(tmp_path / "fig")]
    assert main(argv) == 0

    split = json.loads((out / "split.json").read_text())
    assert len(split["test"]) == 1 and len(split["val"]) == 1 and len(split["train"]) == 1
    done = json.loads((out / "runs" / "t1-to-t2" / "baseline1x1" / "study_done.json").read_text())
    assert done["steps_done"] > 0 and done["calibration"]["seconds_per_step"] > 0
    scores = json.loads((out / "eval" / "t1-to-t2" / "baseline1x1.json").read_text())["subjects"]
    assert [row["subject"] for row in scores] == split["test"]
    # a 3-second 1x1 model can score an SSIM just below 0 (the range is -1..1); the ceiling below must beat it
    assert 0 < scores[0]["mask"]["mae"] < 1 and -1 <= scores[0]["mask"]["ssim"] <= 1
    assert scores[0]["texture"]["lesion"] is not None  # CBICA has a lesion mask
    ceiling = json.loads((out / "eval" / "t1-to-t2" / "ceiling.json").read_text())["subjects"][0]["mask"]
    # Only the loss of the (coarse, 4 mm in quick mode) grid: far better than a trained 1x1 network.
    assert ceiling["ssim"] > 0.5 and ceiling["mae"] < scores[0]["mask"]["mae"]  # the grid ceiling beats a 3-second model
    text = results.read_text()
    assert text.index("## Protocol") < text.index("### Inside the brain mask")
    for title in ("Inverted source", "Intensity lookup", "1x1-conv baseline"):
        assert title in text

    # A second run reuses the finished run and the evaluations: nothing is retrained.
    stamp = (out / "runs" / "t1-to-t2" / "baseline1x1" / "study_done.json").stat().st_mtime_ns
    assert main(argv) == 0
    assert (out / "runs" / "t1-to-t2" / "baseline1x1" / "study_done.json").stat().st_mtime_ns == stamp

    # The model card scores a checkpoint like the study did and keeps its numbers machine-readable.
    from studies import model_card_metrics as card

    checkpoint = out / "runs" / "t1-to-t2" / "baseline1x1" / "checkpoints" / "best-t1-to-t2.safetensors"
    assert card.main([str(checkpoint), "--study", str(out), "--out", str(tmp_path / "card.md")]) == 0
    assert "Not for diagnosis" in (tmp_path / "card.md").read_text()
    assert card.read_card_metrics(tmp_path / "card.md")[split["test"][0]]["psnr"] == pytest.approx(
        scores[0]["mask"]["psnr"], abs=1e-3)
    # a checkpoint stored in float16 is its own float16 copy: scored once, the same numbers twice
    from MRISynthesisLib.checkpoint import load_checkpoint, save_checkpoint

    model, metadata = load_checkpoint(checkpoint)
    half = save_checkpoint(tmp_path / "half.safetensors", model, metadata, half=True)
    scored = card.score_checkpoint(half, out)
    assert scored["half_rows"] == scored["rows"] and scored["fp16_max_abs_difference"] == 0.0

    # Changing a setting that finished runs depend on is refused (exit status 2).
    minutes = argv.index("--minutes-per-model") + 1
    assert main(argv[:minutes] + ["0.2"] + argv[minutes + 1:]) == 2


# -- volume-level corrections (studies.output_calibration) -------------------------------------

def _volume_and_mask(seed=0):
    rng = np.random.default_rng(seed)
    volume = rng.gamma(3.0, 0.1, size=(6, 20, 20)).astype(np.float32)
    mask = np.zeros(volume.shape, dtype=bool)
    mask[:, 3:17, 3:17] = True
    return volume, mask


def test_renormalise_puts_the_brain_percentiles_at_0_and_1_and_leaves_the_input_alone():
    from studies import output_calibration as calibration

    volume, mask = _volume_and_mask()
    before = volume.copy()
    out = calibration.renormalise(volume, mask)
    np.testing.assert_array_equal(volume, before)
    low, high = np.percentile(out[mask], [0.5, 99.5])
    assert low == pytest.approx(0.0, abs=0.01) and high == pytest.approx(1.0, abs=0.01)
    assert out.min() >= 0 and out.max() <= 1 and not out[~mask].any()
    # an affine change of the input does not change the result (the rule is scale-free)
    np.testing.assert_allclose(calibration.renormalise(3 * volume + 0.5, mask), out, atol=1e-5)
    with pytest.raises(InputError, match="constant"):
        calibration.renormalise(np.ones_like(volume), mask)


def test_histogram_map_takes_the_template_histogram_and_keeps_the_order():
    from studies import output_calibration as calibration

    volume, mask = _volume_and_mask()
    template = calibration.quantile_function(np.sqrt(_volume_and_mask(1)[0]), mask)
    out = calibration.histogram_map(volume, mask, template)
    np.testing.assert_allclose(calibration.quantile_function(out, mask), template, atol=0.02)
    order = np.argsort(volume[mask], kind="stable")
    assert np.all(np.diff(out[mask][order]) >= -1e-6)  # monotone: the ranking of voxels is kept
    assert not out[~mask].any()
    # its own histogram as the template: the volume comes back (up to float32)
    same = calibration.histogram_map(volume, mask, calibration.quantile_function(volume, mask))
    np.testing.assert_allclose(same[mask], volume[mask], atol=1e-5)
    with pytest.raises(InputError, match="non-decreasing"):
        calibration.histogram_map(volume, mask, template[::-1])


def test_oracle_linear_recovers_a_known_scale_and_offset():
    from studies import output_calibration as calibration

    reference, mask = _volume_and_mask()
    synthetic = (reference - 0.1) / 2.5
    fitted, a, b = calibration.oracle_linear(synthetic, reference, mask)
    assert a == pytest.approx(2.5, rel=1e-5) and b == pytest.approx(0.1, abs=1e-5)
    np.testing.assert_allclose(fitted[mask], reference[mask], atol=1e-5)
    assert not fitted[~mask].any()


# -- sources study -----------------------------------------------------------------------------

def test_sources_study_swaps_cbica_subjects_for_siblings_of_the_validation_subjects(tmp_path):
    from Training.data import read_split
    from studies.same_source_benefit import splits

    subjects = _subjects()
    source_of = {s.id: s.source for s in subjects}
    files = splits(subjects, tmp_path)
    unseen, seen = read_split(files["unseen"]), read_split(files["seen"])
    assert unseen["val"] == seen["val"]
    val_sources = {source_of[i] for i in seen["val"]}
    assert val_sources == {"BraTS", "MSLUB", "TCGA"}  # one subject of each source beside the validation side's
    assert not val_sources & {source_of[i] for i in unseen["train"]}
    siblings = [i for i in seen["train"] if source_of[i] in val_sources]
    assert sorted(source_of[i] for i in siblings) == ["BraTS", "MSLUB", "TCGA"]
    assert len(seen["train"]) == len(unseen["train"])  # equal size: CBICA subjects swapped out
    assert set(seen["train"]) - set(siblings) < set(unseen["train"])
    for source in val_sources:  # the other sources' siblings only
        without = read_split(files[f"without_{source}"])
        assert without["val"] == seen["val"] and len(without["train"]) == len(unseen["train"])
        assert sorted(source_of[i] for i in without["train"] if source_of[i] in val_sources) == \
            sorted(val_sources - {source})
    assert len(files) == 2 + len(val_sources)
    for split in map(read_split, files.values()):
        ids = split["train"] + split["val"] + split["test"]
        assert len(ids) == len(set(ids)) == len(subjects)
