"""Regression guard: each shipped model, run on one held-out test subject, still reaches the
brain-mask PSNR/SSIM written in its model card (within a small tolerance)."""

import pytest

from MRISynthesisLib.catalog import list_models, resolve_model, resources_dir

PSNR_TOLERANCE_DB = 0.3
SSIM_TOLERANCE = 0.01
#: The smallest test subject (fastest); the card lists every test subject.
PREFERRED_SUBJECTS = ("MSLUB-patient19", "TCGA-DU-7294", "CBICA-302D10226", "BraTS-GLI-00001-000")

SHIPPED = [entry for entry in list_models() if entry.card]


def test_every_shipped_model_has_a_card_and_verified_file():
    for entry in list_models():
        assert entry.card, f"{entry.id} has no model card"
        assert (resources_dir() / entry.card).is_file(), entry.card
        resolve_model(entry.id)  # sha256 checked


@pytest.mark.realdata
@pytest.mark.parametrize("entry", SHIPPED, ids=[e.id for e in SHIPPED])
def test_shipped_model_keeps_its_card_metrics(entry, shared_data):
    from Training.data import discover_subjects
    from studies import subject_scoring as evaluate
    from studies.model_card_metrics import read_card_metrics
    from studies.comparison_protocol import Method

    card = read_card_metrics(resources_dir() / entry.card)
    subject_id = next(s for s in PREFERRED_SUBJECTS + tuple(sorted(card)) if s in card)
    subjects = {s.id: s for s in discover_subjects(shared_data / "paired").subjects}
    case = evaluate.TestCase(subjects[subject_id], entry.direction)
    synthetic, seconds = evaluate.predict(Method("shipped", entry.title, "trained"), case, resolve_model(entry.id))
    measured = evaluate.score(case, synthetic, seconds)["mask"]
    expected = card[subject_id]
    assert measured["psnr"] >= expected["psnr"] - PSNR_TOLERANCE_DB, (measured, expected)
    assert measured["ssim"] >= expected["ssim"] - SSIM_TOLERANCE, (measured, expected)
