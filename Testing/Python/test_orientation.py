"""Canonical axial slices: any stored orientation in, the same geometry out, bit for bit."""

import numpy as np
import pytest
from phantoms import affine_for

from MRISynthesisLib.errors import InputError
from MRISynthesisLib.orientation import find_axial_axis, from_canonical_slices, to_canonical_slices
from MRISynthesisLib.volume import Volume

ORIENTATIONS = {
    "axial_LPS": "LPS", "axial_RAS": "RAS", "axial_flipped_LAI": "LAI",
    "coronal_LSA": "LSA", "coronal_RIP": "RIP", "sagittal_PSL": "PSL", "sagittal_ASR": "ASR",
}


@pytest.mark.parametrize("name", sorted(ORIENTATIONS))
def test_round_trip_is_exact_for_every_orientation(name):
    array = np.random.default_rng(1).standard_normal((7, 9, 11)).astype(np.float32)
    affine = affine_for(ORIENTATIONS[name], spacing=(0.9, 1.1, 5.5))
    stack, transform = to_canonical_slices(array, affine)
    back = from_canonical_slices(stack, transform)
    assert back.dtype == array.dtype and back.shape == array.shape
    assert np.array_equal(back, array)


@pytest.mark.parametrize("name", sorted(ORIENTATIONS))
def test_canonical_stack_runs_inferior_to_superior_anterior_to_posterior_right_to_left(name):
    affine = affine_for(ORIENTATIONS[name], spacing=(1.0, 2.0, 3.0))
    shape = (5, 6, 7)
    # Store each voxel's RAS world coordinate, then check the canonical axes in world space.
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    ras = (affine[:3, :3] @ ijk.T).T + affine[:3, 3]
    stacks = [to_canonical_slices(ras[:, d].reshape(shape), affine)[0] for d in range(3)]
    r, a, s = stacks
    assert np.all(np.diff(s, axis=0) > 0)   # slices go up
    assert np.all(np.diff(a, axis=1) < 0)   # rows go posterior
    assert np.all(np.diff(r, axis=2) < 0)   # columns go to the patient's left
    transform = to_canonical_slices(r, affine)[1]
    spacing = dict(zip(ORIENTATIONS[name], (1.0, 2.0, 3.0)))
    expected = tuple(spacing.get(c, spacing.get({"S": "I", "P": "A", "L": "R"}[c])) for c in "SPL")
    assert transform.canonical_spacing == pytest.approx(expected)


def test_axial_axis_comes_from_the_direction_matrix_not_the_last_axis():
    assert find_axial_axis(affine_for("LPS")) == 2
    assert find_axial_axis(affine_for("LSA")) == 1   # coronal acquisition
    assert find_axial_axis(affine_for("SAR")) == 0   # sagittal stored with S first


def test_oblique_input_uses_the_closest_voxel_plane():
    angle = np.deg2rad(20)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.0, 1.0, 4.0])
    assert find_axial_axis(affine) == 2
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    stack, transform = to_canonical_slices(array, affine)
    assert np.array_equal(from_canonical_slices(stack, transform), array)


def test_volume_kji_conversion_matches_slicer_order():
    array = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)  # [i, j, k]
    volume = Volume(array, np.eye(4))
    kji = volume.array_kji()
    assert kji.shape == (4, 3, 2) and kji[3, 2, 1] == array[1, 2, 3]
    assert np.array_equal(Volume.from_kji(kji, np.eye(4)).array, array)


def test_degenerate_matrix_is_refused():
    with pytest.raises(InputError):
        Volume(np.zeros((4, 4, 4)), np.diag([1.0, 1.0, 0.0, 1.0]))
    with pytest.raises(InputError):
        Volume(np.zeros((4, 4)), np.eye(4))
