"""Masks, normalisation and slice fitting shared by training and inference."""

import numpy as np
import pytest
import torch
from phantoms import head_phantom

from MRISynthesisLib.errors import InputError
from MRISynthesisLib.preprocessing import (SliceGeometry, brain_mask, foreground_slices, gather_context,
                                           normalise_stack, percentile_normalise)


def test_skull_stripped_volume_mask_is_its_positive_voxels():
    array = head_phantom((40, 48, 24))
    array[array > 0] += 1.0  # keep the inside strictly positive
    assert np.array_equal(brain_mask(array), array > 0)


def test_raw_head_scan_with_zero_padding_gets_a_head_mask_not_the_air():
    rng = np.random.default_rng(0)
    head = head_phantom((48, 48, 20))
    array = np.abs(rng.normal(5.0, 2.0, head.shape)).astype(np.float32) + 0.01  # positive air noise
    array[head > 0] = head[head > 0] + 100
    array[:6] = 0  # scanner zero padding on one side (12 % of the voxels)
    mask = brain_mask(array)
    assert (array > 0).mean() > 0.85
    assert abs(mask.mean() - (head > 0).mean()) < 0.05
    assert mask[head > 0].mean() > 0.97


@pytest.mark.realdata
def test_real_raw_scan_mask_excludes_the_air(shared_data):
    from MRISynthesisLib.io import load_volume

    path = next((shared_data / "raw").rglob("*T1_AX_POST_GAD*.nii*"))
    array = load_volume(path).array
    assert (array > 0).mean() > 0.85 and brain_mask(array).mean() < 0.6


def test_percentile_normalisation_maps_percentiles_to_unit_range():
    array = np.arange(1, 1001, dtype=np.float32).reshape(10, 10, 10)
    mask = np.ones_like(array, dtype=bool)
    mask[0] = False
    out, (lo, hi) = percentile_normalise(array, mask, 1.0, 99.0)
    assert lo == pytest.approx(np.percentile(array[mask], 1)) and hi == pytest.approx(np.percentile(array[mask], 99))
    assert out.min() == 0.0 and out.max() == 1.0 and np.all(out[0] == 0)
    assert out.dtype == np.float32


def test_normalise_stack_gives_model_range_with_background_minus_one():
    stack = head_phantom((10, 32, 32))
    model_input, mask = normalise_stack(stack)
    assert model_input.min() == -1.0 and model_input.max() == 1.0
    assert np.all(model_input[~mask] == -1.0)


def test_constant_and_empty_volumes_are_refused():
    with pytest.raises(InputError, match="no foreground"):
        percentile_normalise(np.zeros((4, 4, 4)), np.zeros((4, 4, 4), bool))
    with pytest.raises(InputError, match="constant"):
        percentile_normalise(np.full((4, 4, 4), 3.0), np.ones((4, 4, 4), bool))


def test_gather_context_repeats_edge_slices():
    stack = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 2, 2), np.float32)
    out = gather_context(stack, np.array([0, 4]), 1)
    assert out.shape == (2, 3, 2, 2)
    assert out[0, :, 0, 0].tolist() == [0, 0, 1] and out[1, :, 0, 0].tolist() == [3, 4, 4]


def test_foreground_slices_skips_empty_ones():
    mask = np.zeros((4, 10, 10), bool)
    mask[1, :5] = True
    mask[3, 0, 0] = True  # 1 % of the slice
    assert foreground_slices(mask, 0.005).tolist() == [1, 3]
    assert foreground_slices(mask, 0.05).tolist() == [1]


@pytest.mark.parametrize("rows,cols,spacing", [(240, 240, (1.0, 1.0)), (256, 208, (0.9, 0.9)),
                                               (46, 256, (3.0, 0.94)), (300, 300, (1.0, 1.0))])
def test_slice_geometry_round_trip_keeps_shape_and_fits_the_grid(rows, cols, spacing):
    geometry = SliceGeometry(rows, cols, spacing, 256, 1.0)
    rr, cc = geometry.resized_shape
    assert rr <= 256 and cc <= 256
    assert abs(rr / cc - (rows * spacing[0]) / (cols * spacing[1])) < 0.02
    x = torch.rand(2, 1, rows, cols)
    model = geometry.to_model(x)
    assert model.shape == (2, 1, 256, 256)
    assert (model == -1).any() or (rr, cc) == (256, 256)  # padding unless the slice fills the grid
    back = geometry.from_model(model)
    assert back.shape == x.shape
    smooth = torch.linspace(0, 1, cols).repeat(2, 1, rows, 1)
    assert torch.allclose(geometry.from_model(geometry.to_model(smooth)), smooth, atol=0.05)


def test_fill_slice_holes_fills_what_binary_fill_holes_fills_up_to_the_area():
    """The holes are exactly scipy's ``binary_fill_holes`` regions of each slice, those up to the
    area limit filled (random masks: holes of every size, touching and not touching the border)."""
    from scipy import ndimage

    from MRISynthesisLib.preprocessing import fill_slice_holes

    rng = np.random.default_rng(0)
    for fraction in (0.3, 0.6, 0.9):
        masks = rng.random((6, 37, 29)) < fraction
        masks[0] = True
        masks[1, 5:30, 5:25] = True
        masks[1, 10:14, 10:13] = False
        for spacing, area in (((1.0, 1.0), 100.0), ((0.5, 2.0), 3.0), ((1.0, 1.0), 1e9)):
            expected = masks.copy()
            for index, mask in enumerate(masks):
                labels, count = ndimage.label(ndimage.binary_fill_holes(mask) & ~mask)
                sizes = np.bincount(labels.ravel(), minlength=count + 1)
                small = sizes <= area / (spacing[0] * spacing[1])
                small[0] = False
                expected[index] |= small[labels]
            assert np.array_equal(fill_slice_holes(masks, spacing, area), expected)
