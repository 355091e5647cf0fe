"""The inference engine keeps geometry, masks background, batches, cancels and is deterministic."""

import numpy as np
import pytest
from phantoms import affine_for, head_phantom

from MRISynthesisLib.errors import Cancelled, InputError
from MRISynthesisLib.io import load_volume
from MRISynthesisLib.synthesis import Synthesizer
from MRISynthesisLib.volume import Volume


@pytest.fixture(scope="module")
def synthesizer(tiny_checkpoint):
    return Synthesizer(tiny_checkpoint, device="cpu", batch_size=4)


@pytest.mark.parametrize("axcodes", ["LPS", "RAS", "LSA", "PSL", "RIP"])
def test_output_has_the_input_geometry_in_any_orientation(synthesizer, axcodes):
    volume = Volume(head_phantom((30, 34, 26)), affine_for(axcodes, spacing=(0.9, 0.9, 5.5)))
    before = volume.array.copy()
    result = synthesizer.synthesize(volume)
    assert result.shape == volume.shape
    assert np.array_equal(result.affine, volume.affine)
    assert result.array.dtype == np.float32
    assert np.array_equal(volume.array, before)  # input untouched


def test_same_volume_stored_differently_gives_the_same_synthesis(synthesizer):
    array = head_phantom((30, 34, 26))
    lps = synthesizer.synthesize(Volume(array, affine_for("LPS")))
    # The same anatomy stored with i flipped (RPS): flip the array and the matrix together.
    affine = affine_for("LPS")
    affine[:3, 3] += affine[:3, 0] * 29
    affine[:3, 0] *= -1
    flipped = synthesizer.synthesize(Volume(array[::-1].copy(), affine))
    assert np.allclose(flipped.array[::-1], lps.array, atol=1e-5)


def test_background_and_empty_slices_are_zero_and_values_in_unit_range(synthesizer):
    array = head_phantom((30, 34, 26))
    array[:, :, :3] = 0  # three empty axial slices
    result = synthesizer.synthesize(Volume(array, affine_for("LPS"))).array
    assert np.all(result[array == 0] == 0)
    assert np.all(result[:, :, :3] == 0)
    assert 0.0 <= result.min() and result.max() <= 1.0
    assert result[array > 0].std() > 0


def test_zeros_inside_a_skull_stripped_brain_are_synthesised_not_left_as_holes(tiny_checkpoint):
    import torch

    class Constant(torch.nn.Module):  # output 0 in model range = 0.5 after mapping to [0, 1]
        def forward(self, x):
            return torch.zeros_like(x[:, :1])

    array = head_phantom((30, 34, 26))
    array[12:18, 14:20, 10:16] = 0  # dark "ventricles" clipped to zero, enclosed by brain
    volume = Volume(array, affine_for("RAS"))
    synthesizer = Synthesizer(tiny_checkpoint, device="cpu", batch_size=4)
    synthesizer.model = Constant()
    automatic = synthesizer.synthesize(volume).array
    assert np.all(automatic[12:18, 14:20, 10:16] == 0.5)  # the holes of each axial slice are filled
    assert np.all(automatic[0] == 0) and np.all(automatic[:, :, 0] == 0)  # the outside stays background
    given = synthesizer.synthesize(volume, mask=array > 0).array  # a given mask is used as it is
    assert np.all(given[12:18, 14:20, 10:16] == 0) and np.all(given[array > 0] == 0.5)
    # a large enclosed region (here 6 x 6 voxels of 5 mm = 900 mm^2 per slice) is left out on purpose
    coarse = synthesizer.synthesize(Volume(array, affine_for("RAS", spacing=(5.0, 5.0, 1.0)))).array
    assert np.all(coarse[12:18, 14:20, 10:16] == 0) and np.all(coarse[array > 0] == 0.5)


def test_only_small_holes_of_a_slice_are_filled():
    from MRISynthesisLib.preprocessing import fill_slice_holes

    masks = np.ones((2, 40, 40), dtype=bool)
    masks[:, 0, :] = masks[:, -1, :] = masks[:, :, 0] = masks[:, :, -1] = False  # background border
    masks[0, 5:8, 5:8] = False  # 9 pixels
    masks[1, 5:25, 5:25] = False  # 400 pixels
    before = masks.copy()
    filled = fill_slice_holes(masks, (1.0, 1.0), max_area_mm2=100)
    assert np.array_equal(masks, before)  # input untouched
    assert filled[0, 5:8, 5:8].all() and not filled[1, 5:25, 5:25].any()
    assert not filled[:, 0, :].any()  # the outside is not a hole
    assert fill_slice_holes(masks, (0.5, 0.5), max_area_mm2=100)[1, 5:25, 5:25].all()  # 400 px of 0.25 mm^2


def test_output_is_deterministic_and_independent_of_batch_size(tiny_unet_checkpoint):
    volume = Volume(head_phantom((30, 34, 20)), affine_for("RAS", spacing=(2, 2, 2)))
    a = Synthesizer(tiny_unet_checkpoint, device="cpu", batch_size=1).synthesize(volume).array
    b = Synthesizer(tiny_unet_checkpoint, device="cpu", batch_size=7).synthesize(volume).array
    c = Synthesizer(tiny_unet_checkpoint, device="cpu", batch_size=7).synthesize(volume).array
    assert np.array_equal(b, c)
    assert np.allclose(a, b, atol=1e-5)


def test_progress_reports_every_batch_and_can_cancel(synthesizer):
    volume = Volume(head_phantom((30, 34, 26)), affine_for("LPS"))
    calls = []
    synthesizer.synthesize(volume, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1][0] == calls[-1][1] > 0
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    with pytest.raises(Cancelled):
        synthesizer.synthesize(volume, progress=lambda done, total: False)


def test_bad_volumes_give_clear_errors(synthesizer):
    with pytest.raises(InputError, match="no foreground|constant"):
        synthesizer.synthesize(Volume(np.zeros((20, 20, 5), np.float32), np.eye(4)))
    with pytest.raises(InputError, match="constant"):
        synthesizer.synthesize(Volume(np.full((20, 20, 5), 7.0, np.float32), np.eye(4)))
    with pytest.raises(InputError, match="only"):
        synthesizer.synthesize(Volume(head_phantom((8, 8, 8)), np.eye(4)))
    nan = head_phantom((20, 20, 6))
    nan[3, 3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        synthesizer.synthesize(Volume(nan, np.eye(4)))
    with pytest.raises(InputError, match="mask shape"):
        synthesizer.synthesize(Volume(head_phantom((20, 20, 6)), np.eye(4)), mask=np.ones((2, 2, 2)))


def test_uncertainty_needs_a_sampling_model(synthesizer):
    with pytest.raises(InputError, match="VAE"):
        synthesizer.synthesize_with_uncertainty(Volume(head_phantom(), np.eye(4)))


def test_vae_uncertainty_map(tmp_path):
    import torch

    from MRISynthesisLib.checkpoint import ModelMetadata, save_checkpoint
    from MRISynthesisLib.models import build_model, default_config

    torch.manual_seed(0)
    config = default_config("vae")
    config.update(image_size=128, nf=4) if "nf" in config else config.update(image_size=128)
    model = build_model("vae", **config)
    path = save_checkpoint(tmp_path / "vae.safetensors", model,
                           ModelMetadata(architecture="vae", config=config, direction="t1-to-t2", slice_size=128))
    synthesizer = Synthesizer(path, device="cpu")
    assert synthesizer.supports_uncertainty
    volume = Volume(head_phantom((30, 34, 8)), affine_for("LPS", spacing=(2, 2, 2)))
    mean, std = synthesizer.synthesize_with_uncertainty(volume, samples=3)
    assert mean.shape == std.shape == volume.shape
    assert np.all(std.array >= 0) and std.array.max() > 0
    assert np.all(std.array[volume.array == 0] == 0)


@pytest.mark.realdata
def test_real_raw_scans_keep_their_geometry(shared_data, tiny_checkpoint):
    """The native TCGA series (axial 2D, 0.9 x 0.9 x 5.5 mm, each on its own grid, int16)."""
    synthesizer = Synthesizer(tiny_checkpoint, device="cpu", batch_size=16)
    files = sorted((shared_data / "raw").rglob("*.nii*"))
    assert files, "no raw scans found"
    for path in files:
        volume = load_volume(path)
        result = synthesizer.synthesize(volume)
        assert result.shape == volume.shape, path.name
        assert np.array_equal(result.affine, volume.affine), path.name
        assert np.isfinite(result.array).all() and result.array.max() > 0, path.name
