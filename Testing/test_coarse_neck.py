"""The neck cut (CascadeConfig.coarse_neck_mm): a heart joined to the coarse liver through the diaphragm is cut off."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from LiverSegLib.config import CascadeConfig
from LiverSegLib.errors import ModelError
from LiverSegLib.pipeline.box import Box, coarse_gate, coarse_liver, coarse_liver_box
from LiverSegLib.pipeline.postprocess import ball, cut_necks

SPACING_ZYX = (2.5, 2.0, 2.0)  # a coarse grid


def _ellipsoid(shape, centre, radii_mm):
    grid = np.indices(shape).astype(float)
    return sum(((g - c) * s / r) ** 2 for g, c, s, r in zip(grid, centre, SPACING_ZYX, radii_mm, strict=True)) <= 1


def _liver_and_heart(neck_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A liver ellipsoid, a 'heart' ball above it, joined by a square neck ``neck_mm`` wide; also a thin lobe tip."""
    shape = (60, 80, 100)
    liver = _ellipsoid(shape, (20, 40, 40), (40.0, 60.0, 70.0))
    heart = _ellipsoid(shape, (44, 40, 70), (30.0, 40.0, 40.0)) & ~liver
    half = int(round(neck_mm / 2 / SPACING_ZYX[1]))
    neck = np.zeros(shape, bool)
    neck[30:40, 40 - half:40 + half, 60 - half:60 + half] = True
    tip = np.zeros(shape, bool)
    tip[18:22, 38:42, 5:12] = True  # a thin tongue of liver (8 mm thick) sticking out sideways
    return liver | tip, heart, neck


def test_a_heart_beyond_a_thin_neck_is_cut_and_the_liver_keeps_its_thin_tip():
    liver, heart, neck = _liver_and_heart(neck_mm=8.0)
    mask = liver | heart | neck
    out = cut_necks(mask, SPACING_ZYX, radius_mm=8.0, min_core_ml=10.0)
    assert out.dtype == bool and out.shape == mask.shape
    assert not (out & heart).any()  # the heart's voxels all go with their own core
    assert np.array_equal(out & liver, liver)  # every liver voxel stays, the 8 mm thin tip included
    # the cut follows the nearest core: at most the neck's own voxels remain beyond the liver
    assert np.count_nonzero(out & ~liver) <= np.count_nonzero(neck)


def test_a_broad_join_or_a_small_core_is_not_cut():
    liver, heart, neck = _liver_and_heart(neck_mm=40.0)
    broad = liver | heart | neck
    assert np.array_equal(cut_necks(broad, SPACING_ZYX, 8.0, 10.0), broad)  # the erosion leaves one core
    liver, heart, neck = _liver_and_heart(neck_mm=8.0)
    thin = liver | heart | neck
    assert np.array_equal(cut_necks(thin, SPACING_ZYX, 8.0, min_core_ml=1000.0), thin)  # heart core < 1 L
    assert not cut_necks(np.zeros((4, 4, 4), bool), SPACING_ZYX, 8.0, 10.0).any()


def test_coarse_liver_box_and_gate_leave_the_heart_out_only_with_the_rule():
    liver, heart, neck = _liver_and_heart(neck_mm=8.0)
    fg = np.where(liver | heart | neck, np.float32(0.9), np.float32(0.05))
    native_shape = fg.shape  # a native grid equal to the coarse one (scale 1)
    native_xyz = SPACING_ZYX[::-1]
    han = CascadeConfig(coarse_gate_mm=5.0)
    cut = CascadeConfig(coarse_gate_mm=5.0, coarse_neck_mm=8.0)
    assert (coarse_liver(fg, native_shape, native_xyz, han) & heart).sum() == heart.sum()
    assert not (coarse_liver(fg, native_shape, native_xyz, cut) & heart).any()
    box_han, ml_han = coarse_liver_box(fg, native_shape, native_xyz, han)
    box_cut, ml_cut = coarse_liver_box(fg, native_shape, native_xyz, cut)
    heart_ml = heart.sum() * np.prod(SPACING_ZYX) / 1000.0
    assert ml_han - ml_cut == pytest.approx(heart_ml, rel=0.15)
    assert box_cut.stop[0] < box_han.stop[0]  # the box no longer reaches up into the heart
    whole = Box((0, 0, 0), native_shape)
    gate = coarse_gate(fg, native_shape, whole, cut, native_xyz)
    # heart voxels more than 6 mm from the liver and its neck lie outside the 5 mm gate
    far = heart & (ndimage.distance_transform_edt(~(liver | neck), sampling=SPACING_ZYX) > 6.0)
    assert far.sum() > 0.8 * heart.sum() and not (gate & far).any()
    assert (coarse_gate(fg, native_shape, whole, han, native_xyz) & far).sum() == far.sum()
    # the predictor computes the coarse liver once and hands it to both: the same box and gate
    liver_cut = coarse_liver(fg, native_shape, native_xyz, cut)
    assert coarse_liver_box(fg, native_shape, native_xyz, cut, liver_cut) == (box_cut, ml_cut)
    assert np.array_equal(coarse_gate(fg, native_shape, whole, cut, native_xyz, liver_cut), gate)


def test_neck_config_round_trip_and_errors():
    c = CascadeConfig.from_dict({"coarse_neck_mm": 8, "coarse_neck_min_ml": 20})
    assert (c.coarse_neck_mm, c.coarse_neck_min_ml) == (8.0, 20.0) and CascadeConfig.from_dict(c.to_dict()) == c
    assert CascadeConfig.from_dict({}).coarse_neck_mm is None  # Han's largest component, whole
    assert "coarse_neck_mm" not in CascadeConfig().to_dict()  # older catalogues' entries stay as they were
    with pytest.raises(ModelError, match="coarse_neck_mm"):
        CascadeConfig(coarse_neck_mm=0.0)
    with pytest.raises(ModelError, match="coarse_neck_min_ml"):
        CascadeConfig(coarse_neck_mm=8.0, coarse_neck_min_ml=-1.0)


def test_ball_is_round_in_millimetres_on_an_anisotropic_grid():
    b = ball((2.5, 2.0, 2.0), 8.0)
    assert b.shape == (7, 9, 9) and b[3, 4, 4] and b[3, 4, 0] and b[0, 4, 4] and not b[0, 0, 0]
