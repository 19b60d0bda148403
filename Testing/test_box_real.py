"""The fine stage's liver box on real 512 x 512 CT when the coarse liver is right.

The "coarse liver" is the REFERENCE liver brought to the coarse grid the way the predictor brings the CT there
(``stage_shape`` + ``resample_to_shape``: the extent kept, antialiased in-plane, area-averaged or linear along z),
then thresholded and reduced to its largest component by the predictor's own :func:`coarse_liver_box`. So the test
needs no model weights: it checks that a perfect coarse stage gives the box Han's cascade promises, the reference
liver's bounding box plus the margin, with no whole-volume fallback, also on the anisotropic 0.7 x 0.7 x 4 mm
ircadb scan and when the liver crosses the in-plane edge of the field of view.
"""

from __future__ import annotations

from dataclasses import replace
from functools import cache

import numpy as np
import pytest

from LiverSegLib.data.samples import load_case, shared_data_dir
from LiverSegLib.io import read_volume
from LiverSegLib.pipeline.box import coarse_liver_box
from LiverSegLib.pipeline.geometry import to_canonical
from LiverSegLib.pipeline.grids import resample_to_shape, stage_shape
from LiverSegLib.training.demo_weights import COARSE_SPACING, demo_cascade
from LiverSegLib.types import Volume

CASCADE = demo_cascade()  # what the shipped catalogue is written from
GRIDS = {"coarse": COARSE_SPACING, "quick": CASCADE.quick_spacing_xyz}
# A tight field of view: ircadb1_19 cut through the liver at the patient's right (x min) and anterior (y min)
# edges, in canonical LPS order. The liver then crosses the in-plane edge, as on many 512 x 512 contrast CTs.
TIGHT_FOV = (slice(None), slice(160, None), slice(120, None))


def _ircadb(crop: tuple[slice, ...] | None) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The canonical reference liver (labels 1 + 2) of ircadb1_19 on its CT's grid, and the spacing."""
    shared = shared_data_dir()
    folder = shared / "ircadb1_19" if shared is not None else None
    if folder is None or not (folder / "ct.nii.gz").is_file():
        pytest.skip("ircadb1_19 lives only in ../shared/data beside a development checkout (absent here)")
    ct, seg = read_volume(folder / "ct.nii.gz"), read_volume(folder / "seg.nii.gz")
    assert ct.array_zyx.shape == (124, 512, 512) and seg.same_grid(ct, atol=1e-3)
    return _canonical_liver(seg, crop)


def _canonical_liver(seg: Volume, crop: tuple[slice, ...] | None) -> tuple[np.ndarray, tuple[float, float, float]]:
    canonical, _ = to_canonical(seg)
    liver = canonical.array_zyx > 0
    return (liver[crop] if crop else liver), tuple(canonical.spacing_xyz)


@cache  # one read per case for both grids; nothing modifies the arrays
def _case(name: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    if name == "ircadb1_19":
        return _ircadb(None)
    if name == "ircadb1_19_tight_fov":
        return _ircadb(TIGHT_FOV)
    _, seg = load_case("ts_example_dicom")
    assert seg.array_zyx.shape == (20, 512, 512)
    return _canonical_liver(seg, None)


def _extent(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last index of ``mask`` per axis."""
    present = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    return np.array([p[0] for p in present]), np.array([p[-1] for p in present])


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("case", ["ircadb1_19", "ircadb1_19_tight_fov", "ts_example_dicom"])
def test_perfect_coarse_liver_gives_the_reference_box_plus_margin(case, grid):
    liver, spacing_xyz = _case(case)
    native_shape = liver.shape
    coarse_shape = stage_shape(native_shape, spacing_xyz, GRIDS[grid])
    coarse_fg = resample_to_shape(liver, coarse_shape)  # what a perfect coarse network would output
    box, coarse_ml = coarse_liver_box(coarse_fg, native_shape, spacing_xyz, CASCADE)

    assert box.fallback is None, box.fallback
    lo, hi = _extent(liver)
    margin = np.ceil(np.asarray(CASCADE.margin_mm[::-1]) / np.asarray(spacing_xyz[::-1]))
    expected_start = np.maximum(lo - margin, 0)
    expected_stop = np.minimum(hi + 1 + margin, native_shape)
    # One coarse voxel of slack, in native voxels: the coarse mask keeps a voxel when at least half of it is liver,
    # so a boundary sliver thinner than half a coarse voxel moves the coarse edge by one coarse voxel.
    slack = np.maximum(1, np.ceil(np.asarray(native_shape) / np.asarray(coarse_shape)))
    assert np.all(np.abs(np.array(box.start) - expected_start) <= slack), (box.start, expected_start, slack)
    assert np.all(np.abs(np.array(box.stop) - expected_stop) <= slack), (box.stop, expected_stop, slack)
    assert np.all(np.array(box.start) <= lo) and np.all(np.array(box.stop) >= hi + 1), "the box cuts the liver"
    reference_ml = np.count_nonzero(liver) * float(np.prod(spacing_xyz)) / 1000.0
    assert coarse_ml == pytest.approx(reference_ml, rel=0.05)

    if case == "ircadb1_19_tight_fov":
        assert box.start[1:] == (0, 0) and "y min" in box.note and "x min" in box.note and "clipped" in box.note
        # the removed cause: the old rule ran the fine stage on the whole volume for this correct coarse liver
        old = replace(CASCADE, fallback_on_inplane_edge=True)
        assert "in-plane edge" in coarse_liver_box(coarse_fg, native_shape, spacing_xyz, old)[0].fallback
