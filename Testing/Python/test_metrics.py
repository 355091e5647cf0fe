"""Specification of MRISynthesisLib.metrics: values checked by hand or against scikit-image."""

import json
import math

import numpy as np
import pytest
from skimage.metrics import normalized_mutual_information, structural_similarity

from MRISynthesisLib import metrics
from MRISynthesisLib.errors import InputError


def _smooth_volume(shape=(4, 24, 24), seed=0):
    """A positive, smooth-ish volume with structure for SSIM (values roughly 10..110)."""
    rng = np.random.default_rng(seed)
    _, rows, cols = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return 60 + 40 * np.sin(rows / 3.0) * np.cos(cols / 4.0) + rng.normal(0, 5, shape)


# ---------------------------------------------------------------------- MAE / MSE / PSNR by hand

PRED = np.array([[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]])
REF = np.array([[[1.0, 1.0], [3.0, 6.0]], [[5.0, 6.0], [4.0, 8.0]]])
# differences: 0, 1, 0, -2 | 0, 0, 3, 0  -> |d| sum 6, d^2 sum 14 over 8 voxels


def test_mae_of_known_2x2x2_arrays():
    assert metrics.mae(PRED, REF) == pytest.approx(6 / 8)


def test_mse_of_known_2x2x2_arrays():
    assert metrics.mse(PRED, REF) == pytest.approx(14 / 8)


def test_psnr_of_known_2x2x2_arrays():
    assert metrics.psnr(PRED, REF, data_range=7.0) == pytest.approx(10 * math.log10(49 / (14 / 8)))


def test_mae_mse_psnr_use_only_mask_voxels():
    mask = np.zeros(PRED.shape, dtype=bool)
    mask[0, 1, 1] = mask[1, 1, 0] = True  # differences -2 and 3
    assert metrics.mae(PRED, REF, mask) == pytest.approx(2.5)
    assert metrics.mse(PRED, REF, mask) == pytest.approx(6.5)
    assert metrics.psnr(PRED, REF, 1.0, mask) == pytest.approx(10 * math.log10(1 / 6.5))


def test_psnr_of_identical_images_is_inf():
    assert metrics.psnr(REF, REF, data_range=1.0) == math.inf


def test_psnr_requires_positive_data_range():
    with pytest.raises(InputError, match="data_range"):
        metrics.psnr(PRED, REF, data_range=0)


# ---------------------------------------------------------------------- SSIM

def test_ssim_of_identical_images_is_one():
    volume = _smooth_volume()
    assert metrics.ssim(volume, volume, data_range=100.0) == pytest.approx(1.0)


def test_masked_ssim_is_skimage_full_map_averaged_in_mask():
    ref = _smooth_volume(seed=1)
    pred = ref + np.random.default_rng(2).normal(0, 10, ref.shape)
    mask = np.zeros(ref.shape, dtype=bool)
    mask[1:3, 5:20, 4:15] = True
    expected_maps = [
        structural_similarity(ref[s], pred[s], data_range=100.0, gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False, full=True)[1]
        for s in range(ref.shape[0])
    ]
    expected = np.stack(expected_maps)[mask].mean()
    assert metrics.ssim(pred, ref, data_range=100.0, mask=mask) == pytest.approx(expected, rel=1e-12)
    assert metrics.ssim(pred, ref, data_range=100.0, mask=mask) < 0.99


def test_ssim_slices_along_the_given_axis():
    ref = _smooth_volume(seed=3)
    pred = ref + np.random.default_rng(4).normal(0, 10, ref.shape)
    moved = metrics.ssim(np.moveaxis(pred, 0, 2), np.moveaxis(ref, 0, 2), 100.0, slice_axis=2)
    assert moved == pytest.approx(metrics.ssim(pred, ref, 100.0, slice_axis=0), rel=1e-12)


def test_ssim_of_slices_smaller_than_window_is_an_input_error():
    with pytest.raises(InputError, match="11 x 11"):
        metrics.ssim(PRED, REF, data_range=1.0)


# ---------------------------------------------------------------------- mutual information

def test_mi_of_half_half_two_level_image_with_itself_is_one_bit_and_nmi_two():
    image = np.zeros((4, 4))
    image[:, :2] = 1.0
    mi_bits, nmi = metrics.mutual_information(image, image)
    assert mi_bits == pytest.approx(1.0)
    assert nmi == pytest.approx(2.0)


def test_mi_of_image_with_itself_is_its_entropy_in_bits():
    image = np.repeat(np.arange(4.0), [8, 4, 2, 2]).reshape(4, 4)  # p = 1/2, 1/4, 1/8, 1/8
    mi_bits, nmi = metrics.mutual_information(image, image, bins=4)
    assert mi_bits == pytest.approx(1.75)
    assert nmi == pytest.approx(2.0)


def test_mi_of_independent_images_is_near_zero():
    rng = np.random.default_rng(5)
    a, b = rng.random((200, 200)), rng.random((200, 200))
    mi_bits, nmi = metrics.mutual_information(a, b, bins=16)
    assert mi_bits < 0.01
    assert nmi == pytest.approx(1.0, abs=0.002)


def test_nmi_matches_skimage_on_the_same_histogram():
    rng = np.random.default_rng(6)
    a = rng.random((30, 30))
    b = a + 0.3 * rng.random((30, 30))
    _, nmi = metrics.mutual_information(a, b, bins=20)
    assert nmi == pytest.approx(normalized_mutual_information(a, b, bins=20), rel=1e-9)


def test_mi_uses_only_mask_voxels():
    image = np.zeros((4, 4))
    image[:, :2] = 1.0
    noise = np.arange(16.0).reshape(4, 4)
    mask = np.zeros((4, 4), dtype=bool)
    mask[0, :] = True  # values 1, 1, 0, 0 in both images
    mi_bits, _ = metrics.mutual_information(image, np.where(mask, image, noise), mask=mask)
    assert mi_bits == pytest.approx(1.0)


# ---------------------------------------------------------------------- error maps

def test_relative_error_map_is_zero_outside_mask_and_relative_inside():
    ref = np.array([[2.0, 4.0], [0.0, 10.0]])
    pred = np.array([[3.0, 2.0], [5.0, 10.0]])
    mask = np.array([[True, True], [False, True]])
    result = metrics.relative_error_map(pred, ref, mask, eps=1e-6)
    expected = np.array([[1 / (2 + 1e-6), 2 / (4 + 1e-6)], [0.0, 0.0]])
    np.testing.assert_allclose(result, expected, rtol=1e-6)
    assert result.shape == ref.shape


def test_absolute_error_map_is_difference_magnitude_inside_mask():
    mask = np.zeros(PRED.shape, dtype=bool)
    mask[1] = True
    result = metrics.absolute_error_map(PRED, REF, mask)
    np.testing.assert_array_equal(result[1], [[0, 0], [3, 0]])
    np.testing.assert_array_equal(result[0], 0)


# ---------------------------------------------------------------------- normalisation

def test_percentile_normalisation_maps_p99_5_to_one_and_p0_5_to_zero():
    volume = np.arange(-20.0, 201.0).reshape(13, 17)  # mask holds 0..200: p0.5 = 1 and p99.5 = 199 exactly
    mask = volume >= 0
    normalised, info = metrics.normalise_for_metrics(volume, mask, "percentile")
    assert (info["low"], info["high"]) == pytest.approx((1.0, 199.0))
    assert normalised[volume == 199][0] == 1.0
    assert normalised[volume == 1][0] == 0.0
    assert normalised[volume == 100][0] == pytest.approx(99 / 198)
    assert np.all(normalised[volume >= 199] == 1.0) and np.all(normalised[volume <= 1] == 0.0)


def test_zscore_normalisation_uses_mask_voxels():
    volume = np.array([[1.0, 3.0], [100.0, -50.0]])
    mask = np.array([[True, True], [False, False]])
    normalised, info = metrics.normalise_for_metrics(volume, mask, "zscore")
    np.testing.assert_allclose(normalised[mask], [-1.0, 1.0])
    assert info == {"mode": "zscore", "mean": 2.0, "std": 1.0}


def test_unknown_normalisation_is_an_input_error():
    with pytest.raises(InputError, match="normalisation"):
        metrics.normalise_for_metrics(REF, None, "robust")


# ---------------------------------------------------------------------- evaluate

def _pair_with_brain_mask():
    ref = _smooth_volume(shape=(5, 24, 24), seed=7)
    pred = ref + np.random.default_rng(8).normal(0, 8, ref.shape)
    mask = np.zeros(ref.shape, dtype=bool)
    mask[1:4, 4:20, 5:19] = True  # slices 0 and 4 hold no mask voxel
    return pred, ref, mask


def test_evaluate_records_conventions_and_data_range():
    pred, ref, mask = _pair_with_brain_mask()
    result = metrics.evaluate(pred, ref, mask)
    conventions = result["conventions"]
    assert conventions["normalisation"] == "percentile"
    assert conventions["data_range"] == 1.0
    assert conventions["mask"] == "given"
    assert conventions["region"] == "mask"
    assert conventions["pooling"] == "per-volume"
    assert conventions["slice_axis"] == 0
    assert conventions["ssim"] == "gaussian sigma 1.5, K1 0.01, K2 0.03, population covariance, map averaged in mask"
    assert conventions["mi"] == "bits, 64-bin joint histogram over mask voxels"


def test_evaluate_data_range_for_zscore_is_reference_range_in_mask():
    pred, ref, mask = _pair_with_brain_mask()
    result = metrics.evaluate(pred, ref, mask, normalisation="zscore")
    z = (ref[mask] - ref[mask].mean()) / ref[mask].std()
    assert result["conventions"]["data_range"] == pytest.approx(z.max() - z.min())


def test_evaluate_mask_metrics_match_individual_functions_on_normalised_images():
    pred, ref, mask = _pair_with_brain_mask()
    result = metrics.evaluate(pred, ref, mask)
    pred_n, _ = metrics.normalise_for_metrics(pred, mask, "percentile")
    ref_n, _ = metrics.normalise_for_metrics(ref, mask, "percentile")
    assert result["mae"] == pytest.approx(metrics.mae(pred_n, ref_n, mask))
    assert result["mse"] == pytest.approx(metrics.mse(pred_n, ref_n, mask))
    assert result["psnr"] == pytest.approx(metrics.psnr(pred_n, ref_n, 1.0, mask))
    assert result["ssim"] == pytest.approx(metrics.ssim(pred_n, ref_n, 1.0, mask))
    assert (result["mi_bits"], result["nmi"]) == pytest.approx(metrics.mutual_information(pred_n, ref_n, mask))


def test_evaluate_whole_slice_uses_all_voxels_of_slices_with_mask():
    pred, ref, mask = _pair_with_brain_mask()
    result = metrics.evaluate(pred, ref, mask)
    pred_n, _ = metrics.normalise_for_metrics(pred, mask, "percentile")
    ref_n, _ = metrics.normalise_for_metrics(ref, mask, "percentile")
    slab = np.zeros(ref.shape, dtype=bool)
    slab[1:4] = True
    assert result["whole_slice"]["mae"] == pytest.approx(metrics.mae(pred_n, ref_n, slab))
    assert result["whole_slice"]["ssim"] == pytest.approx(metrics.ssim(pred_n, ref_n, 1.0, slab))
    assert set(result["whole_slice"]) == set(metrics.METRIC_NAMES)


def test_evaluate_of_identical_volumes_is_perfect():
    _, ref, mask = _pair_with_brain_mask()
    result = metrics.evaluate(ref, ref, mask)
    assert result["mae"] == 0.0
    assert result["psnr"] == math.inf
    assert result["ssim"] == pytest.approx(1.0)
    assert result["nmi"] == pytest.approx(2.0)


def test_per_slice_excludes_empty_slices_and_reports_their_mean():
    pred, ref, mask = _pair_with_brain_mask()
    per_slice = metrics.evaluate(pred, ref, mask, per_slice=True)["per_slice"]
    assert per_slice["slice_indices"] == [1, 2, 3]
    assert len(per_slice["psnr"]) == 3
    assert per_slice["mean"]["mae"] == pytest.approx(np.mean(per_slice["mae"]))
    pred_n, _ = metrics.normalise_for_metrics(pred, mask, "percentile")
    ref_n, _ = metrics.normalise_for_metrics(ref, mask, "percentile")
    assert per_slice["mae"][0] == pytest.approx(metrics.mae(pred_n[1], ref_n[1], mask[1]))


def test_evaluate_without_mask_uses_foreground_then_all_voxels():
    pred, ref, _ = _pair_with_brain_mask()
    assert metrics.evaluate(pred, ref)["conventions"]["mask"] == "foreground (ref > 0)"
    negative = -np.abs(ref)
    conventions = metrics.evaluate(pred, negative)["conventions"]
    assert conventions["mask"].startswith("all voxels")
    assert conventions["mask_voxels"] == ref.size


def test_evaluate_accepts_a_2d_slice():
    pred, ref, mask = _pair_with_brain_mask()
    result = metrics.evaluate(pred[2], ref[2], mask[2], per_slice=True)
    assert result["per_slice"]["slice_indices"] == [0]
    assert result["conventions"]["slice_axis"] is None


def test_evaluate_result_is_json_serialisable():
    pred, ref, mask = _pair_with_brain_mask()
    result = metrics.evaluate(pred, ref, mask, per_slice=True)
    assert json.loads(json.dumps(result))["mae"] == result["mae"]


@pytest.mark.parametrize(
    "pred, ref, mask, message",
    [
        (np.zeros((4, 12, 12)), np.zeros((4, 12, 13)), None, "shape"),
        (np.ones((4, 12, 12)), np.ones((4, 12, 12)), np.zeros((4, 12, 12), dtype=bool), "empty"),
        (np.full((4, 12, 12), np.nan), np.ones((4, 12, 12)), None, "NaN"),
        (np.ones((4, 12, 12)), np.ones((4, 12, 12)), np.ones((4, 12, 11), dtype=bool), "mask has shape"),
    ],
    ids=["shape-mismatch", "empty-mask", "nan", "mask-shape"],
)
def test_bad_inputs_raise_one_line_input_error(pred, ref, mask, message):
    with pytest.raises(InputError, match=message) as caught:
        metrics.evaluate(pred, ref, mask)
    assert "\n" not in str(caught.value)


def test_constant_reference_without_range_normalisation_is_an_input_error():
    with pytest.raises(InputError, match="constant"):
        metrics.evaluate(np.ones((2, 12, 12)), np.ones((2, 12, 12)), normalisation="none")


# ---------------------------------------------------------------------- GLCM

def test_glcm_contrast_of_constant_image_is_zero():
    features = metrics.glcm_features(np.full((2, 16, 16), 5.0), None)
    assert features["contrast"] == 0.0
    assert features["dissimilarity"] == 0.0
    assert features["homogeneity"] == 1.0
    assert features["energy"] == 1.0


def test_glcm_contrast_of_checkerboard_is_large():
    checkerboard = (np.indices((16, 16)).sum(axis=0) % 2).astype(float)
    features = metrics.glcm_features(checkerboard, None, levels=64)
    # Horizontal and vertical neighbours differ by 63 levels, diagonal ones by 0.
    assert features["contrast"] == pytest.approx(63**2 / 2)
    assert features["slices_used"] == [0]


def test_glcm_counts_only_pairs_inside_mask():
    image = np.zeros((16, 16))
    image[:, 8:] = 1.0  # constant inside the left half, a step at the mask border
    image[:, 9:] = np.indices((16, 7)).sum(axis=0) % 2  # noise outside the mask
    mask = np.zeros((16, 16), dtype=bool)
    mask[:, :8] = True
    features = metrics.glcm_features(image, mask, min_voxels=10)
    assert features["contrast"] == 0.0


def test_glcm_skips_slices_with_too_few_mask_voxels():
    volume = np.random.default_rng(9).random((3, 16, 16))
    mask = np.zeros(volume.shape, dtype=bool)
    mask[0] = True
    mask[2, :3, :3] = True
    features = metrics.glcm_features(volume, mask, min_voxels=100)
    assert features["slices_used"] == [0]
    assert features["conventions"]["levels"] == 64


# ---------------------------------------------------------------------- table

def test_format_table_lists_every_metric_and_the_conventions():
    pred, ref, mask = _pair_with_brain_mask()
    result = metrics.evaluate(pred, ref, mask, per_slice=True)
    table = metrics.format_table(result)
    for name in ("MAE", "MSE", "PSNR", "SSIM", "MI (bits)", "NMI", "whole slice", "per-slice mean"):
        assert name in table
    assert "conventions:" in table
    for key in ("normalisation: percentile", "data_range: 1.0", "mask: given", "pooling: per-volume",
                "ssim: gaussian sigma 1.5", "mi: bits, 64-bin"):
        assert key in table
    assert f"{result['mae']:.4f}" in table


# -- a whole-head reference: the synthetic volume is 0 outside the brain (issue 23) ----------------

def _whole_head_pair(tmp_path):
    """A 'whole-head' reference (brain plus a bright scalp around it) and a synthetic volume that,
    like every output, is 0 outside the brain it was made in; and that brain mask."""
    from phantoms import affine_for

    from MRISynthesisLib.io import save_volume
    from MRISynthesisLib.volume import Volume

    k, j, i = np.mgrid[-1:1:40j, -1:1:48j, -1:1:44j]
    radius = np.sqrt(i ** 2 + j ** 2 + k ** 2).transpose(2, 1, 0)
    brain, head = radius < 0.55, radius < 0.9
    rng = np.random.default_rng(0)
    reference = np.where(brain, 100 + 20 * rng.random(radius.shape), np.where(head, 300.0, 0)).astype(np.float32)
    synthetic = np.where(brain, 0.4 + 0.1 * rng.random(radius.shape), 0).astype(np.float32)
    affine = affine_for("LPS")
    paths = [save_volume(Volume(array, affine), tmp_path / name) for array, name in
             ((reference, "ref.nii.gz"), (synthetic, "syn.nii.gz"), (brain.astype(np.float32), "brain.nii.gz"))]
    return paths


def test_evaluate_against_a_whole_head_reference_says_to_pass_the_brain_mask(tmp_path, capsys):
    from MRISynthesisLib.cli import main

    reference, synthetic, brain = _whole_head_pair(tmp_path)
    assert main(["evaluate", "--pred", str(synthetic), "--ref", str(reference)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "the synthetic volume is 0 in 7" in warnings[0] and "--mask" in warnings[0], warnings
    assert main(["evaluate", "--pred", str(synthetic), "--ref", str(reference), "--mask", str(brain)]) == 0
    assert "warning" not in capsys.readouterr().err
