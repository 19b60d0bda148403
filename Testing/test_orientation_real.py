"""Stored orientation and geometry on a real CT: the same scan stored any way gives the same labelmap in patient space.

The baseline is the shipped demo model's result on TotalSegmentator's example CT (3 mm, stored RAS) made axial LPS
with ``to_canonical``. Every variant is written to disk (NIfTI or NRRD), read back with ``read_volume``, segmented,
and its labelmap is mapped through physical space (SimpleITK, nearest neighbour) onto the grid it is compared with:

* LPS, RAS, LAS, flipped slices, coronal-stored (permuted axes): the same voxels, so the labelmap must be identical.
* anisotropic 0.8 x 0.8 x 4 mm, stored coronal and RAS: identical to the segmentation of the same resampled content
  stored axial LPS (a pure storage change once more); against the 3 mm baseline it is compared with a floor only.
* oblique (30 degrees about the left-right axis, resampled so that it holds the same CT): segmented on an axial grid
  and mapped back; it must agree with the segmentation of that axial content in patient space, be much closer to the
  baseline than processing the tilted slices as if they were axial, and say that it was resampled.

Why no 0.98 floor against the baseline for the variants whose voxels differ: this demo model's output depends on how
the scan is framed and sampled far more than a good model's would. Moving the grid by exactly one voxel (identical
HU, one slab cut off and one padded) already gives liver Dice 0.945 against the baseline, a half-voxel linear resampling
0.90-0.95. So any variant whose voxels are not the baseline's (anisotropic: 0.943; oblique: 0.928) is compared with the
same content stored axial, which isolates the orientation handling from the model's sensitivity to resampling.

``quick=True`` runs both stages on the 3 mm grid: that is this CT's own resolution, the orientation code path is the
same, and it keeps the 11 segmentations of this file within about a minute on a busy 2-core machine.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

import LiverSegLib.pipeline.predictor as predictor_module
from LiverSegLib.data.samples import load_case
from LiverSegLib.io import read_volume, write_volume
from LiverSegLib.pipeline.geometry import (
    MAX_OBLIQUITY_DEG,
    needs_resampling,
    obliquity_deg,
    to_axial_grid,
    to_canonical,
)
from LiverSegLib.pipeline.predictor import Predictor
from LiverSegLib.types import Volume

QUICK = {"quick": True}
OBLIQUE_DEG = 30.0
ANISOTROPIC_MM = (0.8, 0.8, 4.0)


# ---------------------------------------------------------------- helpers


def _image(volume: Volume) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array_zyx))
    image.SetSpacing(volume.spacing_xyz)
    image.SetOrigin(volume.origin_xyz)
    image.SetDirection(tuple(float(v) for v in volume.direction.ravel()))
    return image


def _onto(volume: Volume, grid: Volume, interpolator=sitk.sitkNearestNeighbor, outside: float = 0.0) -> np.ndarray:
    """``volume`` sampled at the voxel centres of ``grid`` through physical (LPS) space."""
    out = sitk.Resample(_image(volume), _image(grid), sitk.Transform(), interpolator, float(outside))
    return sitk.GetArrayFromImage(out)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0  # liver including its lesions
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def _store(volume: Volume, perm: tuple[int, int, int], signs: tuple[int, int, int]) -> Volume:
    """The same voxels at the same LPS points, stored with image axis ``n`` along patient axis ``perm[n]`` (sign
    ``signs[n]``); ``volume`` must have the identity direction."""
    assert np.allclose(volume.direction, np.eye(3))
    sizes = volume.shape_xyz
    array = np.transpose(volume.array_zyx, [2 - perm[2 - a] for a in range(3)])
    array = array[tuple(slice(None, None, -1) if signs[2 - a] < 0 else slice(None) for a in range(3))]
    direction = np.zeros((3, 3))
    first = np.zeros(3)
    for n in range(3):
        direction[perm[n], n] = signs[n]
        first[perm[n]] = sizes[perm[n]] - 1 if signs[n] < 0 else 0
    spacing = tuple(volume.spacing_xyz[perm[n]] for n in range(3))
    return Volume(np.ascontiguousarray(array), spacing, tuple(volume.index_to_physical(first)), direction)


def _regrid(volume: Volume, direction: np.ndarray, spacing) -> Volume:
    """``volume`` resampled (linear, air outside) onto a grid with ``direction`` and ``spacing`` that covers its
    whole physical extent, so that it holds the same CT at the same patient positions."""
    n = np.asarray(volume.shape_xyz, float)
    corners = volume.index_to_physical(np.array([[i, j, k] for i in (-0.5, n[0] - 0.5) for j in (-0.5, n[1] - 0.5)
                                                 for k in (-0.5, n[2] - 0.5)]))
    centre = corners.mean(axis=0)
    local = (corners - centre) @ direction  # the extent along the new axes
    sp = np.asarray(spacing, float)
    size = np.ceil((local.max(0) - local.min(0)) / sp - 1e-6).astype(int)
    origin = centre + direction @ (-(size - 1) * sp / 2.0)
    grid = Volume(np.zeros(size[::-1], np.uint8), tuple(sp), tuple(origin), direction)
    array = _onto(volume, grid, sitk.sitkLinear, -1024.0).astype(volume.array_zyx.dtype)
    return grid.with_array(array)


def _round_trip(volume: Volume, path) -> Volume:
    back = read_volume(write_volume(volume, path))
    np.testing.assert_array_equal(back.array_zyx, volume.array_zyx)
    assert back.same_grid(volume)
    return back


def _rotation_x(deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def predictor():
    return Predictor(device="cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("orientation")


@pytest.fixture(scope="module")
def baseline(predictor):
    ct, _ = load_case("ts_example_ct")
    assert not np.allclose(ct.direction, np.eye(3))  # stored RAS: the baseline is itself a re-oriented view
    canonical, _ = to_canonical(ct)
    base = Volume(np.ascontiguousarray(canonical.array_zyx), canonical.spacing_xyz, canonical.origin_xyz,
                  canonical.direction)
    assert np.allclose(base.direction, np.eye(3))
    labels = predictor.predict(base, **QUICK).labelmap
    assert labels.same_grid(base) and 1000 < np.count_nonzero(labels.array_zyx) < labels.array_zyx.size // 4
    return base, labels


@pytest.fixture(scope="module")
def oblique(predictor, baseline, folder):
    base, _ = baseline
    stored = _round_trip(_regrid(base, _rotation_x(OBLIQUE_DEG), base.spacing_xyz), folder / "oblique.nrrd")
    result = predictor.predict(stored, **QUICK)
    with pytest.MonkeyPatch.context() as mp:  # what the predictor did before: the tilted slices taken as axial
        mp.setattr(predictor_module, "needs_resampling", lambda volume: False)
        as_if_axial = predictor.predict(stored, **QUICK)
    axial, _ = to_axial_grid(stored)
    axial_labels = predictor.predict(axial, **QUICK).labelmap
    return {"stored": stored, "result": result, "as_if_axial": as_if_axial, "axial": axial,
            "axial_labels": axial_labels}


# ---------------------------------------------------------------- exact re-orientations: identical labelmaps

# name -> (image axis n along patient axis perm[n], with sign signs[n]), file type
EXACT = {
    "LPS": ((0, 1, 2), (1, 1, 1), ".nrrd"),
    "RAS": ((0, 1, 2), (-1, -1, 1), ".nii.gz"),
    "LAS": ((0, 1, 2), (1, -1, 1), ".nrrd"),
    "axial slices flipped": ((0, 1, 2), (1, 1, -1), ".nii.gz"),
    "coronal-stored (permuted)": ((0, 2, 1), (1, -1, -1), ".nii.gz"),
}


@pytest.mark.parametrize("name", list(EXACT))
def test_reoriented_storage_gives_the_identical_labelmap(name, predictor, baseline, folder):
    base, base_labels = baseline
    perm, signs, ext = EXACT[name]
    stored = _round_trip(_store(base, perm, signs), folder / f"{name.split()[0]}{ext}")
    # the same HU at the same LPS points
    np.testing.assert_array_equal(_onto(stored, base, outside=-5000), base.array_zyx)

    result = predictor.predict(stored, **QUICK)
    assert result.labelmap.same_grid(stored) and result.labelmap.array_zyx.dtype == np.uint8
    assert "resampled_to_axial" not in result.details
    np.testing.assert_array_equal(_onto(result.labelmap, base), base_labels.array_zyx, err_msg=name)


def test_anisotropic_spacing_follows_its_axes_through_storage(predictor, baseline, folder):
    base, base_labels = baseline
    axial = _regrid(base, np.eye(3), ANISOTROPIC_MM)  # 0.8 x 0.8 x 4 mm, axial LPS
    # stored coronal and RAS: the 4 mm spacing now belongs to the second image axis
    stored = _round_trip(_store(axial, (0, 2, 1), (-1, 1, -1)), folder / "anisotropic.nii.gz")
    assert stored.spacing_xyz == pytest.approx((0.8, 4.0, 0.8))

    reference = predictor.predict(axial, **QUICK).labelmap
    result = predictor.predict(stored, **QUICK)
    assert result.labelmap.same_grid(stored)
    np.testing.assert_array_equal(_onto(result.labelmap, axial), reference.array_zyx)
    # Against the 3 mm baseline the content itself differs (resampled to 0.8 x 0.8 x 4 mm): measured 0.943, a floor.
    assert _dice(_onto(result.labelmap, base), base_labels.array_zyx) >= 0.92


# ---------------------------------------------------------------- oblique: resampled to axial, mapped back


def test_oblique_volume_is_resampled_and_its_labelmap_lies_on_the_stored_grid(oblique):
    stored, result = oblique["stored"], oblique["result"]
    assert obliquity_deg(stored.direction) == pytest.approx(OBLIQUE_DEG, abs=1e-3)
    assert any("30 degrees oblique" in w and "resampled to an axial grid" in w for w in result.warnings), \
        result.warnings
    labels = result.labelmap
    assert labels.same_grid(stored) and labels.array_zyx.dtype == np.uint8
    assert set(np.unique(labels.array_zyx).tolist()) <= {0, 1, 2}
    assert result.liver_volume_ml == pytest.approx(np.count_nonzero(labels.array_zyx) * stored.voxel_volume_ml)
    info = result.details["resampled_to_axial"]
    assert info["axial_shape_zyx"] == list(oblique["axial"].array_zyx.shape)
    assert not any("oblique" in w for w in oblique["as_if_axial"].warnings)


def test_axial_grid_holds_the_same_ct_at_the_same_patient_positions(oblique, baseline):
    base, _ = baseline
    stored, axial = oblique["stored"], oblique["axial"]
    assert np.allclose(axial.direction, np.eye(3)) and axial.spacing_xyz == pytest.approx(stored.spacing_xyz)
    # it covers the stored volume's extent: every stored corner voxel centre is inside the axial grid
    n = np.asarray(stored.shape_xyz)
    corners = stored.index_to_physical(np.array([[i, j, k] for i in (0, n[0] - 1) for j in (0, n[1] - 1)
                                                 for k in (0, n[2] - 1)]))
    ijk = (corners - np.asarray(axial.origin_xyz)) / np.asarray(axial.spacing_xyz)
    assert (ijk >= -0.5).all() and (ijk <= np.asarray(axial.shape_xyz) - 0.5).all()
    # HU back on the baseline grid: the same anatomy in the same place (three linear interpolations in between)
    back = _onto(axial, base, sitk.sitkLinear, -1024.0).astype(np.float64)
    inside = np.zeros(base.array_zyx.shape, bool)
    inside[8:-8, 8:-8, 8:-8] = True
    assert np.corrcoef(back[inside], base.array_zyx[inside])[0, 1] > 0.95
    shifted = np.roll(base.array_zyx, 2, axis=0)  # two slices (6 mm) off correlates clearly worse
    assert np.corrcoef(back[inside], shifted[inside])[0, 1] < np.corrcoef(back[inside], base.array_zyx[inside])[0, 1]


def test_oblique_labelmap_agrees_in_patient_space(oblique, baseline):
    base, base_labels = baseline
    result, axial, axial_labels = oblique["result"], oblique["axial"], oblique["axial_labels"]
    # the labels mapped back to the oblique grid, seen again on the axial grid they were computed on: only the two
    # nearest-neighbour steps through a 30-degree rotated 3 mm grid separate them (measured 0.986)
    assert _dice(_onto(result.labelmap, axial), axial_labels.array_zyx) >= 0.98
    # against the baseline: the content was resampled twice (measured 0.928), far better than the tilted slices
    # processed as if they were axial (measured 0.862)
    resampled = _dice(_onto(result.labelmap, base), base_labels.array_zyx)
    as_if_axial = _dice(_onto(oblique["as_if_axial"].labelmap, base), base_labels.array_zyx)
    assert resampled >= 0.90
    assert resampled >= as_if_axial + 0.03


# ---------------------------------------------------------------- the threshold (no model)


@pytest.mark.parametrize(("deg", "resample"), [(0.0, False), (5.0, False), (MAX_OBLIQUITY_DEG - 0.1, False),
                                                (MAX_OBLIQUITY_DEG + 0.1, True), (OBLIQUE_DEG, True)])
def test_only_clearly_oblique_axes_are_resampled(deg, resample):
    for direction in (_rotation_x(deg), _rotation_x(deg) @ np.diag([-1.0, -1.0, 1.0]),
                      _rotation_x(deg) @ np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])):  # RAS-like, coronal
        volume = Volume(np.zeros((2, 2, 2), np.int16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), direction)
        assert needs_resampling(volume) is resample
