"""Fold assignment and bookkeeping of the k-fold cross-validation study (fake subject lists; no data)."""

import json
from collections import Counter

import pytest

from MRISynthesisLib.errors import InputError
from studies import cross_validation as cv

#: today's 15 paired subjects by source, plus prepared longitudinal pairs (two sessions of two patients)
TODAY = ([(f"CBICA-{i}", "CBICA") for i in range(8)] + [("BraTS-a", "BraTS"), ("BraTS-b", "BraTS"),
         ("MSLUB-patient07", "MSLUB"), ("MSLUB-patient19", "MSLUB"), ("TCGA-a", "TCGA"), ("TCGA-b", "TCGA"),
         ("GLISTR-ex0", "GLISTR")])
LONGITUDINAL = [("MSLUB-patient01-study1", "MSLUB"), ("MSLUB-patient01-study2", "MSLUB"),
                ("MSLUB-patient12-study1", "MSLUB"), ("MSLUB-patient12-study2", "MSLUB"),
                ("MSLUB-patient04-study1", "MSLUB")]


@pytest.mark.parametrize("subjects", [TODAY, TODAY + LONGITUDINAL])
@pytest.mark.parametrize("k", [3, 5])
def test_every_subject_is_tested_exactly_once(subjects, k):
    folds = cv.make_folds(subjects, k, seed=0)
    tested = [i for fold in folds for i in fold]
    assert sorted(tested) == sorted(i for i, _ in subjects)
    for split in cv.fold_splits(folds):
        assert not set(split["train"]) & set(split["test"])
        assert sorted(split["train"] + split["test"]) == sorted(tested)
        assert split["val"] == []


def test_patients_are_not_split_and_sources_are_spread():
    subjects = TODAY + LONGITUDINAL
    folds = cv.make_folds(subjects, 5, seed=0)
    fold_of = {i: f for f, fold in enumerate(folds) for i in fold}
    assert fold_of["MSLUB-patient01-study1"] == fold_of["MSLUB-patient01-study2"]
    assert fold_of["MSLUB-patient12-study1"] == fold_of["MSLUB-patient12-study2"]
    source = dict(subjects)
    for name in ("CBICA", "BraTS", "TCGA"):  # as many folds as the source has patients (up to k)
        patients = {cv.patient_of(i) for i in source if source[i] == name}
        assert len({fold_of[i] for i in source if source[i] == name}) == min(len(patients), 5)
    counts = Counter(fold_of[i] for i in source if source[i] == "CBICA")
    assert max(counts.values()) - min(counts.values()) <= 1
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 2


def test_folds_are_deterministic_and_independent_of_input_order():
    a = cv.make_folds(TODAY, 5, seed=0)
    assert cv.make_folds(list(reversed(TODAY)), 5, seed=0) == a
    assert any(cv.make_folds(TODAY, 5, seed=s) != a for s in range(1, 5))


def test_patient_of():
    assert cv.patient_of("MSLUB-patient01-study2") == "MSLUB-patient01"
    assert cv.patient_of("sub-01_ses-2") == "sub-01"
    assert cv.patient_of("CBICA-301D00252") == "CBICA-301D00252"
    assert cv.patient_of("BraTS-GLI-00001-000") == "BraTS-GLI-00001-000"


def test_bad_fold_counts_are_refused():
    with pytest.raises(InputError, match="too few"):
        cv.make_folds(TODAY[:3], 5)
    with pytest.raises(InputError, match="at least 2"):
        cv.make_folds(TODAY, 1)
    with pytest.raises(InputError, match="unique"):
        cv.make_folds(TODAY + TODAY[:1], 5)


def test_queue_file_and_training_command(tmp_path):
    (tmp_path / "folds.json").write_text(json.dumps({"folds": []}))  # a plan written before plans had a precision
    (tmp_path / "queue.txt").write_text("# comment\nt1-to-t2 v5c 0 4  # first\n\nt2-to-t1 v2 3 2.5\n")
    assert cv.read_queue(tmp_path) == [("t1-to-t2", "v5c", 0, 4.0), ("t2-to-t1", "v2", 3, 2.5)]
    command = cv.training_command(tmp_path, "t1-to-t2", "v5c", 0, 4.0)
    overrides = {k: json.loads(v) for k, v in (arg.split("=", 1) for arg in command if "=" in arg)}
    assert overrides["train.max_cpu_minutes"] == 4.0
    assert overrides["train.threads"] == 1
    assert overrides["data.split_file"].endswith("fold0/split.json")
    assert overrides["data.cache_dir"].endswith("fold0-t1-to-t2-ctx1")  # 2.5D candidate: its own cache
    assert overrides["train.precision"] == "fp32" and "train.channels_last" not in overrides
    (tmp_path / "folds.json").write_text(json.dumps({"folds": [], "precision": "bf16"}))
    overrides = {k: json.loads(v) for k, v in (arg.split("=", 1) for arg in
                                               cv.training_command(tmp_path, "t2-to-t1", "v2", 1, 4.0) if "=" in arg)}
    assert overrides["train.precision"] == "bf16" and overrides["train.channels_last"] is True
    (tmp_path / "queue-b.txt").write_text("t2-to-t1 v5d 1 30\n")  # a second driver's queue
    assert cv.read_queue(tmp_path, "queue-b.txt") == [("t2-to-t1", "v5d", 1, 30.0)]
    (tmp_path / "queue.txt").write_text("t1-to-t2 v9 0 4\n")
    with pytest.raises(InputError, match="queue.txt:1"):
        cv.read_queue(tmp_path)


@pytest.mark.parametrize("recipe", sorted(cv.RECIPES))
def test_every_recipe_trains_on_its_input_and_synthesises_whole_slices(recipe):
    """Each recipe's configuration loads with its overrides, and its generator takes what training
    feeds it (crops or whole slices, with the 2.5D neighbours) and a whole 256 px slice, as the
    Synthesizer gives it."""
    import torch

    from MRISynthesisLib.models import build_model
    from Training.config import load_config

    config_file, extra, _ = cv.RECIPES[recipe]
    config = load_config(str(cv.REPO / config_file), [f"{k}={json.dumps(v)}" for k, v in extra.items()])
    channels = 1 + 2 * config.data.context_slices
    generator = build_model(config.model.generator, in_channels=channels,
                            **config.model.generator_options).eval()
    train_size = config.data.crop_size or config.data.slice_size
    with torch.no_grad():
        for size in (train_size, 256):
            assert generator(torch.zeros(1, channels, size, size)).shape == (1, 1, size, size)


def test_table_from_scores(tmp_path):
    folds = cv.make_folds(TODAY, 5, seed=0)
    source = dict(TODAY)
    (tmp_path / "folds.json").write_text(json.dumps(
        {"folds": [[{"id": i, "source": source[i]} for i in fold] for fold in folds]}))
    for recipe, offset in (("v4", 0.0), ("v5c", 1.0)):
        for f, fold in enumerate(folds[:2]):
            rows = [{"subject": i, "source": source[i], "slices_per_second": 4.0,
                     "mask": {"psnr": 20.0 + offset, "ssim": 0.8, "mae": 0.05}} for i in fold]
            path = cv.run_dir(tmp_path, "t1-to-t2", recipe, f) / "scores.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps({"direction": "t1-to-t2", "recipe": recipe, "fold": f, "steps": 10,
                                        "train_cpu_minutes": 4.0, "rows": rows,
                                        **({"precision": "bf16"} if recipe == "v5c" else {})}))
    text = cv.table(tmp_path)
    assert "| v5c − v4 | 6 | 1.00 ± 0.00 | 0.000 ± 0.000 |" in text
    assert "| v4 | 0 | fp32 | 10 | 4.0 | 4.0 ± 0.0 |" in text  # scores from before the precision was kept: fp32
    assert "| v5c | 1 | bf16 | 10 | 4.0 | 4.0 ± 0.0 |" in text
    assert "(n=6)" in text


def test_external_table_pairs_the_folds_both_recipes_scored(tmp_path):
    for recipe, fold, psnr in (("v4", 0, 20.0), ("v4", 1, 22.0), ("v5c", 0, 21.5)):
        rows = [{"subject": i, "source": "MSLUB", "mask": {"psnr": psnr + k, "ssim": 0.7, "mae": 0.05}}
                for k, i in enumerate(("patient01-study1", "patient04-study1"))]
        path = cv.run_dir(tmp_path, "t1-to-t2", recipe, fold) / "scores-external.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"direction": "t1-to-t2", "recipe": recipe, "fold": fold, "rows": rows}))
    shipped = tmp_path / "shipped" / "t1-to-t2-resunet-v4" / "scores-external.json"
    shipped.parent.mkdir(parents=True)
    shipped.write_text(json.dumps({"direction": "t1-to-t2", "recipe": "shipped:t1-to-t2-resunet-v4", "fold": None,
                                   "rows": [{"subject": "patient01-study1", "mask": {"psnr": 19.0, "ssim": 0.75}}]}))
    text = "\n".join(cv.external_table(tmp_path))
    assert "| subject | v4 | v5c | shipped:t1-to-t2-resunet-v4 |" in text
    assert ("| patient01-study1 | 21.00 ± 1.41 / 0.700 ± 0.000 (n=2) | 21.50 / 0.700 (n=1) | 19.00 / 0.750 (n=1) |"
            in text)
    assert "| patient04-study1 | 22.00 ± 1.41 / 0.700 ± 0.000 (n=2) | 22.50 / 0.700 (n=1) | – |" in text
    # fold 1 has no v5c model: the difference is taken on fold 0 only (+1.5 dB), not on v4's mean (+0.5)
    assert "v5c − v4 over 2 subjects (each the mean over the folds both scored): ΔPSNR 1.50 ± 0.00 dB" in text


def _tiny_subject(root, name):
    import nibabel as nib
    import numpy as np

    folder = root / name
    folder.mkdir(parents=True)
    for value, contrast in enumerate(("t1", "t2")):
        nib.save(nib.Nifti1Image(np.full((4, 4, 4), value, np.float32), np.eye(4)), folder / f"{contrast}.nii.gz")
    return folder


@pytest.mark.parametrize("native_bf16", [True, False])
def test_plan_records_the_training_precision_and_refuses_to_change_it(tmp_path, monkeypatch, native_bf16):
    import MRISynthesisLib.device as device

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: native_bf16)
    for name in ("BraTS-a", "BraTS-b"):
        _tiny_subject(tmp_path / "paired", name)
    out = tmp_path / "cv"
    data = cv.plan(out, [tmp_path / "paired"], 2, 0, "auto")
    expected = "bf16" if native_bf16 else "fp32"
    assert data["precision"] == expected == cv.plan_precision(out)
    assert cv.plan(out, [tmp_path / "paired"], 2, 0, expected)["folds"] == data["folds"]  # same plan again: fine
    other = "fp32" if native_bf16 else "bf16"
    with pytest.raises(InputError, match="another training precision"):
        cv.plan(out, [tmp_path / "paired"], 2, 0, other)
    assert cv.plan_precision(out) == expected  # the refused plan changed nothing
    with pytest.raises(InputError, match="precision 'fp16'"):
        cv.resolve_precision("fp16")


def test_external_subjects_must_be_outside_the_plan(tmp_path):
    planned, extra = tmp_path / "paired", tmp_path / "prepared"
    kept = _tiny_subject(planned, "MSLUB-patient07")
    _tiny_subject(extra, "patient01-study1")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "all.csv").write_text(
        f"subject,t1,t2,mask,lesion_mask,source\nMSLUB-patient07,{kept / 't1.nii.gz'},{kept / 't2.nii.gz'},,,MSLUB\n")
    assert [s.id for s in cv.external_subjects(tmp_path / "out", [extra])] == ["patient01-study1"]
    with pytest.raises(InputError, match="MSLUB-patient07 is in the plan"):
        cv.external_subjects(tmp_path / "out", [planned])
    with pytest.raises(InputError, match="no T1/T2 pairs found"):
        cv.external_subjects(tmp_path / "out", [tmp_path / "out"])


def test_external_scoring_skips_scored_checkpoints_and_rescores_retrained_ones(tmp_path, monkeypatch):
    from types import SimpleNamespace

    folder = cv.run_dir(tmp_path, "t2-to-t1", "v2", 0)
    (folder / "checkpoints").mkdir(parents=True)
    checkpoint = folder / "checkpoints" / "last-t2-to-t1.safetensors"
    checkpoint.write_bytes(b"20 CPU minutes")
    (folder / "scores.json").write_text(json.dumps({"direction": "t2-to-t1", "recipe": "v2", "fold": 0, "rows": []}))
    calls = []
    monkeypatch.setattr(cv, "external_subjects", lambda out, roots: [SimpleNamespace(id="patient01-study1")])
    monkeypatch.setattr(cv, "_score_subjects", lambda path, subjects, direction, label: calls.append(path) or [
        {"subject": "patient01-study1", "mask": {"psnr": 15.0, "ssim": 0.6, "mae": 0.1}}])
    assert cv.score_external(tmp_path, [tmp_path]) == [folder / "scores-external.json"]
    assert cv.score_external(tmp_path, [tmp_path]) == [] and len(calls) == 1  # same checkpoint: skipped
    checkpoint.write_bytes(b"30 CPU minutes")  # trained further: its old external scores are stale
    assert cv.score_external(tmp_path, [tmp_path]) == [folder / "scores-external.json"] and len(calls) == 2


def test_external_scoring_of_the_shipped_models(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from MRISynthesisLib import catalog

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"shipped")
    models = [SimpleNamespace(id="t2-to-t1-unet-l1-v1", direction="t2-to-t1", is_users=False, path=lambda: weights),
              SimpleNamespace(id="mine", direction="t2-to-t1", is_users=True, path=lambda: weights)]
    monkeypatch.setattr(catalog, "list_models", lambda direction=None: models)
    monkeypatch.setattr(cv, "external_subjects", lambda out, roots: [SimpleNamespace(id="patient01-study1")])
    scored = []
    monkeypatch.setattr(cv, "_score_subjects", lambda path, subjects, direction, label: scored.append(
        (path, direction)) or [{"subject": "patient01-study1", "mask": {"psnr": 15.0, "ssim": 0.6, "mae": 0.1}}])
    target = tmp_path / "shipped" / "t2-to-t1-unet-l1-v1" / "scores-external.json"
    assert cv.score_external(tmp_path, [tmp_path]) == []  # not asked for
    assert cv.score_external(tmp_path, [tmp_path], shipped=True) == [target]  # the user's own model is not scored
    assert scored == [(weights, "t2-to-t1")]
    assert json.loads(target.read_text())["recipe"] == "shipped:t2-to-t1-unet-l1-v1"


@pytest.mark.parametrize("trained, retrained", [(30.0, True), (60.0, False)])
def test_queue_trains_a_finished_run_further_when_given_more_minutes(tmp_path, monkeypatch, trained, retrained):
    folder = cv.run_dir(tmp_path, "t1-to-t2", "v4", 0)
    folder.mkdir(parents=True)
    (folder / "report.md").write_text("finished at 30 CPU minutes\n")
    (tmp_path / "queue.txt").write_text("t1-to-t2 v4 0 60\n")
    commands = []
    monkeypatch.setattr(cv, "_train_minutes", lambda path: trained)
    monkeypatch.setattr(cv, "training_command", lambda *args: ["train", *map(str, args[1:])])
    monkeypatch.setattr(cv.subprocess, "run", lambda command, **kw: commands.append(command[0]) or
                        __import__("types").SimpleNamespace(returncode=0))
    cv.run_queue(tmp_path)
    assert commands == (["train"] if retrained else []) + [cv.sys.executable]  # then scored


def _overrides(command):
    return {k: json.loads(v) for k, v in (arg.split("=", 1) for arg in command if "=" in arg)}


def test_a_scheduled_run_keeps_the_recipe_learning_rate_policy_over_its_steps(tmp_path):
    """``v4@4000``: v4's own linear decay (its last 16 of 40 epochs) over 4000 steps, not the
    ranking runs' constant learning rate; its own run folder; the minutes only cap it."""
    (tmp_path / "folds.json").write_text(json.dumps({"folds": [], "precision": "bf16"}))
    assert cv.parse_recipe("v4") == ("v4", None)
    assert cv.parse_recipe("v5d@16000") == ("v5d", 16000)
    command = cv.training_command(tmp_path, "t1-to-t2", "v4@4000", 2, 0)
    overrides = _overrides(command)
    assert "optim.lr_policy" not in overrides  # the recipe's own (linear) policy
    assert (overrides["train.epochs"], overrides["train.steps_per_epoch"], overrides["optim.decay_epochs"]) == (40, 100, 16)
    assert overrides["train.checkpoint_every"] == cv.SCHEDULED_SAVE_EVERY  # resumable mid-run
    assert overrides["train.max_cpu_minutes"] == 0
    assert overrides["output_dir"].endswith("runs/t1-to-t2/v4@4000") and overrides["name"] == "fold2"
    # v2 (10 epochs, 4 decaying) over 2200 steps: the decay keeps its 40 %
    overrides = _overrides(cv.training_command(tmp_path, "t2-to-t1", "v2@2200", 0, 30))
    assert (overrides["train.epochs"], overrides["optim.decay_epochs"], overrides["train.max_cpu_minutes"]) == (22, 9, 30)
    # the ranking runs are unchanged: constant learning rate for a CPU-minute budget
    assert _overrides(cv.training_command(tmp_path, "t1-to-t2", "v4", 2, 8))["optim.lr_policy"] == "constant"


@pytest.mark.parametrize("name, message", [("v4@150", "multiple of 100"), ("v4@", "multiple of 100"),
                                           ("v4@-100", "multiple of 100"), ("v9@4000", "unknown recipe")])
def test_bad_scheduled_recipes_are_refused_with_the_queue_line(tmp_path, name, message):
    (tmp_path / "queue.txt").write_text(f"t1-to-t2 v4@4000 0 0\nt1-to-t2 {name} 0 0\n")
    with pytest.raises(InputError, match=f"queue.txt:2: .*{message}"):
        cv.read_queue(tmp_path)
    (tmp_path / "queue.txt").write_text("t1-to-t2 v4@4000 0 0\n")
    assert cv.read_queue(tmp_path) == [("t1-to-t2", "v4@4000", 0, 0.0)]


@pytest.mark.parametrize("steps, minutes, cap, trains", [
    (4000, 18.0, 0, False),   # finished its steps
    (2500, 30.0, 30, False),  # stopped by its cap, and the queue gives no more minutes
    (2500, 30.0, 60, True),   # stopped by its cap, the queue gives more: trains on
    (2500, 30.0, 0, True),    # stopped by a cap the queue has since lifted
])
def test_queue_trains_a_scheduled_run_until_its_steps(tmp_path, monkeypatch, steps, minutes, cap, trains):
    folder = cv.run_dir(tmp_path, "t1-to-t2", "v4@4000", 0)
    folder.mkdir(parents=True)
    (folder / "report.md").write_text("finished\n")
    monkeypatch.setattr(cv, "_steps", lambda path: steps)
    monkeypatch.setattr(cv, "_train_minutes", lambda path: minutes)
    assert cv._needs_training(folder, "v4@4000", cap) is trains


def test_table_compares_scheduled_runs_with_the_default_scheduled_run(tmp_path):
    folds = cv.make_folds(TODAY, 5, seed=0)
    source = dict(TODAY)
    (tmp_path / "folds.json").write_text(json.dumps(
        {"folds": [[{"id": i, "source": source[i]} for i in fold] for fold in folds]}))
    for recipe, psnr in (("v4", 20.0), ("v5d", 20.5), ("v4@4000", 21.0), ("v5d@16000", 22.5)):
        rows = [{"subject": i, "source": source[i], "slices_per_second": 4.0,
                 "mask": {"psnr": psnr, "ssim": 0.8, "mae": 0.05}} for i in folds[0]]
        path = cv.run_dir(tmp_path, "t1-to-t2", recipe, 0) / "scores.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"direction": "t1-to-t2", "recipe": recipe, "fold": 0, "steps": 10,
                                    "train_cpu_minutes": 4.0, "rows": rows, "precision": "bf16"}))
    text = cv.table(tmp_path)
    n = len(folds[0])
    assert f"| v5d − v4 | {n} | 0.50 |" in text or f"| v5d − v4 | {n} | 0.50 ± 0.00 |" in text
    assert f"| v5d@16000 − v4@4000 | {n} | 1.50" in text
    assert "v4@4000 − v4" not in text  # a schedule is not compared with a minute budget
    assert "| subject | source | fold | v4 | v4@4000 | v5d | v5d@16000 |" in text


def test_unseen_subjects_leave_out_what_a_shipped_model_trained_and_was_validated_on(monkeypatch):
    from types import SimpleNamespace

    plan = [SimpleNamespace(id=i) for i in ("CBICA-1", "CBICA-2", "TCGA-a", "patient01-study1")]
    monkeypatch.setattr(cv, "_manifest_subjects", lambda out: plan)
    metadata = SimpleNamespace(model_id="m", training_data={"train_subject_ids": ["CBICA-1"], "val_subject_ids": ["TCGA-a"]})
    assert [s.id for s in cv.unseen_subjects("out", metadata)] == ["CBICA-2", "patient01-study1"]
    with pytest.raises(InputError, match="lists no training subjects"):
        cv.unseen_subjects("out", SimpleNamespace(model_id="m", training_data={}))


def test_shipped_models_are_scored_on_their_unseen_subjects_and_compared_with_the_recipes(tmp_path, monkeypatch):
    """A real shipped checkpoint (its metadata lists the 9 subjects it trained on and the 2 it was
    validated on): scored on the other plan subjects only, once per file; the table pairs each
    recipe's fold models with it on those subjects."""
    from types import SimpleNamespace

    from MRISynthesisLib.catalog import list_models
    from MRISynthesisLib.checkpoint import read_metadata

    model = next(m for m in list_models() if m.id == "t1-to-t2-resunet-v4")
    seen = read_metadata(model.path()).training_data["train_subject_ids"]
    plan = [SimpleNamespace(id=seen[0], source="CBICA"), SimpleNamespace(id="patient01-study1", source="other"),
            SimpleNamespace(id="TCGA-DU-7294", source="TCGA")]
    monkeypatch.setattr(cv, "_manifest_subjects", lambda out: plan)
    scored = []
    monkeypatch.setattr(cv, "_score_subjects", lambda path, subjects, direction, label: scored.append(
        [s.id for s in subjects]) or [{"subject": s.id, "source": s.source,
                                       "mask": {"psnr": 17.0, "ssim": 0.65, "mae": 0.1}} for s in subjects])
    models = [(model.id, model.direction, model.path())]
    target = tmp_path / "shipped" / model.id / "scores-unseen.json"
    assert cv.score_unseen(tmp_path, models) == [target]
    assert scored == [["patient01-study1", "TCGA-DU-7294"]]  # not the subject it trained on
    assert cv.score_unseen(tmp_path, models) == [] and len(scored) == 1  # same file, same subjects: skipped
    for f, (subject, source, psnr) in enumerate([("patient01-study1", "other", 18.0), ("TCGA-DU-7294", "TCGA", 16.5),
                                                  (seen[0], "CBICA", 30.0)]):
        path = cv.run_dir(tmp_path, "t1-to-t2", "v4@4000", f) / "scores.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"direction": "t1-to-t2", "recipe": "v4@4000", "fold": f, "steps": 4000,
                                    "train_cpu_minutes": 17.0, "rows": [{"subject": subject, "source": source,
                                    "mask": {"psnr": psnr, "ssim": 0.65, "mae": 0.1}}]}))
    text = "\n".join(cv.unseen_table(tmp_path))
    assert "t1-to-t2-resunet-v4 (shipped) against the recipes on the 2 plan subjects it never saw" in text
    assert "| v4@4000 | 2 | 17.25 ± 1.06 / 0.650 ± 0.000 | 17.00 ± 0.00 / 0.650 ± 0.000 | 0.25 ± 1.06 | 0.000 ± 0.000 | TCGA -0.50 |" in text


@pytest.mark.parametrize("command", ["train", "score"])
def test_the_command_line_refuses_an_unknown_recipe_before_anything_runs(tmp_path, capsys, command):
    assert cv.main([command, "--out", str(tmp_path), "--direction", "t1-to-t2", "--recipe", "v9@4000",
                    "--fold", "0"]) == 2
    assert "unknown recipe 'v9'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing written
