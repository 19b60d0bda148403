"""Unit tests of the cascade's parts: orientation, resampling, the liver box, post-processing, input checks."""

import itertools

import numpy as np
import pytest

from LiverSegLib.config import CascadeConfig
from LiverSegLib.errors import InputError
from LiverSegLib.pipeline.box import coarse_liver_box, coarse_voxel_ml, liver_box
from LiverSegLib.pipeline.checks import check_segmentable, ct_intensity_warning
from LiverSegLib.pipeline.geometry import obliquity_deg, to_canonical
from LiverSegLib.pipeline.grids import resample_to_shape, sample_to_native, stage_shape, stage_to_native_index
from LiverSegLib.pipeline.postprocess import largest_component, lesion_table, max_diameter_mm, prune_lesions
from LiverSegLib.types import Volume


def _rotation(ax, ay):
    cx, sx, cy, sy = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay)
    return np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])


def _signed_permutations():
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            d = np.zeros((3, 3))
            for col, (row, s) in enumerate(zip(perm, signs, strict=True)):
                d[row, col] = s
            yield d


@pytest.mark.parametrize("direction", list(_signed_permutations()))
def test_canonical_view_keeps_every_voxel_at_its_patient_position(direction):
    rng = np.random.default_rng(1)
    a = rng.integers(-1000, 1000, (3, 4, 5)).astype(np.int16)
    v = Volume(a, (0.7, 1.1, 2.5), (10.0, -20.0, 30.0), direction)
    c, orient = to_canonical(v)
    np.testing.assert_allclose(c.direction, np.eye(3), atol=1e-12)
    k, j, i = np.indices(a.shape)
    stored = {tuple(np.round(p, 6)): val for p, val in
              zip(v.index_to_physical(np.stack([i, j, k], -1).reshape(-1, 3)), a.ravel(), strict=True)}
    k, j, i = np.indices(c.array_zyx.shape)
    for p, val in zip(c.index_to_physical(np.stack([i, j, k], -1).reshape(-1, 3)), c.array_zyx.ravel(), strict=True):
        assert stored[tuple(np.round(p, 6))] == val
    assert np.array_equal(orient.invert(c.array_zyx), a)
    assert np.shares_memory(c.array_zyx, a)  # a view, never a copy of the whole volume


def test_canonical_view_of_oblique_volume_keeps_closest_axes():
    d = _rotation(np.radians(15), np.radians(10)) @ np.diag([-1, -1, 1])
    v = Volume(np.zeros((4, 5, 6), np.int16), (1.0, 1.0, 3.0), (0, 0, 0), d)
    c, orient = to_canonical(v)
    assert orient.axes == (0, 1, 2) and orient.flips == (False, True, True)
    assert np.all(np.diag(c.direction) > 0.9)
    assert 14 < obliquity_deg(d) < 19


def test_stage_shape_and_index_mapping():
    assert stage_shape((100, 512, 512), (0.78, 0.78, 1.0), (2.0, 2.0, 2.5)) == (40, 200, 200)
    assert stage_shape((100, 512, 512), (0.78, 0.78, 1.0), (None, None, 2.5)) == (40, 512, 512)
    # the first and last stage voxel centres map inside the native extent, symmetric about its centre
    lo = stage_to_native_index(np.array([0, 0, 0]), (100, 512, 512), (40, 200, 200))
    hi = stage_to_native_index(np.array([39, 199, 199]), (100, 512, 512), (40, 200, 200))
    np.testing.assert_allclose(lo + hi, [99, 511, 511])


def test_resample_keeps_constant_and_linear_ramps():
    const = np.full((10, 40, 30), 50, np.int16)
    out = resample_to_shape(const, (5, 20, 15))
    assert out.dtype == np.float32 and out.shape == (5, 20, 15)
    np.testing.assert_allclose(out, 50.0, atol=1e-3)
    ramp = np.broadcast_to(np.arange(12, dtype=np.float32)[:, None, None], (12, 8, 8))
    up = resample_to_shape(ramp, (24, 8, 8))
    # interior samples of an upsampled ramp lie on the ramp at n = (s + 0.5) / 2 - 0.5
    s = np.arange(2, 22)
    np.testing.assert_allclose(up[2:22, 4, 4], (s + 0.5) / 2 - 0.5, atol=1e-4)
    clipped = resample_to_shape(np.full((4, 8, 8), 3000, np.int16), (4, 4, 4), hu_window=(-160, 240))
    assert clipped.max() == pytest.approx(240.0)


def test_sample_to_native_inverts_the_grid_relation():
    class _Box:
        start, stop = (2, 0, 3), (9, 6, 10)
        shape = (7, 6, 7)

    native_shape, coarse_shape = (12, 6, 12), (6, 3, 4)
    scale = np.asarray(native_shape, float) / np.asarray(coarse_shape, float)
    zz = np.arange(coarse_shape[0], dtype=np.float32)[:, None, None]
    stage = np.broadcast_to(zz, coarse_shape).copy()  # value = stage z index
    out = sample_to_native(stage, (0, 0, 0), scale, _Box())
    n = np.arange(2, 9)
    expected = np.clip((n + 0.5) / scale[0] - 0.5, 0, coarse_shape[0] - 1)
    np.testing.assert_allclose(out[:, 2, 2].astype(np.float32), expected, atol=2e-3)


def _liver_mask(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return m


def test_liver_box_maps_coarse_extent_to_native_with_margin():
    coarse = _liver_mask((20, 50, 50), (5, 10, 12), (15, 30, 40))
    box = liver_box(coarse, (40, 100, 100), (1.0, 1.0, 2.0), CascadeConfig(margin_mm=(4.0, 4.0, 4.0),
                                                                            min_liver_ml=1.0))
    assert box.fallback is None and box.note is None
    assert box.start == (10 - 2, 20 - 4, 24 - 4)
    assert box.stop == (30 + 2, 60 + 4, 80 + 4)


def test_coarse_voxel_volume_follows_the_grid_relation():
    # native 100 x 100 x 40 at 1 x 1 x 2 mm on a 50 x 50 x 20 grid: 2 x 2 x 4 mm = 16 uL
    assert coarse_voxel_ml((40, 100, 100), (1.0, 1.0, 2.0), (20, 50, 50)) == pytest.approx(0.016)


@pytest.mark.parametrize(
    ("mask", "cascade", "reason"),
    [
        (np.zeros((20, 50, 50), bool), CascadeConfig(), "found no liver"),
        (_liver_mask((20, 50, 50), (5, 10, 10), (6, 12, 12)), CascadeConfig(min_liver_ml=30.0), "tiny"),
        # the old rule, still honoured when a catalogue asks for it explicitly
        (_liver_mask((20, 50, 50), (5, 0, 10), (15, 30, 40)),
         CascadeConfig(min_liver_ml=1.0, fallback_on_inplane_edge=True), "in-plane edge"),
    ],
)
def test_liver_box_falls_back_to_whole_volume(mask, cascade, reason):
    box = liver_box(mask, (40, 100, 100), (1.0, 1.0, 2.0), cascade)
    assert reason in box.fallback
    assert box.start == (0, 0, 0) and box.stop == (40, 100, 100)


@pytest.mark.parametrize(
    ("lo", "hi", "edges"),
    [
        ((5, 0, 10), (15, 30, 40), "y min"),  # anterior edge
        ((5, 10, 30), (15, 30, 50), "x max"),  # lateral edge
        ((5, 0, 0), (15, 50, 50), "y min, y max, x min, x max"),  # liver across the whole slice
    ],
)
def test_liver_touching_the_inplane_edge_gives_a_clipped_box_not_a_fallback(lo, hi, edges):
    """A coarse liver at the in-plane field-of-view edge (common on 512 x 512 CT) keeps its box: the liver's
    bounding box plus the margin, clipped to the volume, and a note instead of a whole-volume fine stage."""
    coarse = _liver_mask((20, 50, 50), lo, hi)
    box = liver_box(coarse, (40, 100, 100), (1.0, 1.0, 2.0), CascadeConfig(margin_mm=(4.0, 4.0, 4.0),
                                                                            min_liver_ml=1.0))
    assert CascadeConfig().fallback_on_inplane_edge is False  # the default
    assert box.fallback is None
    scale, margin = np.array([2, 2, 2]), np.array([2, 4, 4])  # native voxels per coarse voxel; 4 mm in voxels
    assert box.start == tuple(np.maximum(np.array(lo) * scale - margin, 0))
    assert box.stop == tuple(np.minimum(np.array(hi) * scale + margin, (40, 100, 100)))
    assert box.note is not None and f"({edges})" in box.note and "clipped" in box.note


def test_liver_box_touching_first_slice_only_clips():
    coarse = _liver_mask((20, 50, 50), (0, 10, 12), (15, 30, 40))
    box = liver_box(coarse, (40, 100, 100), (1.0, 1.0, 2.0), CascadeConfig(min_liver_ml=1.0))
    assert box.fallback is None and box.start[0] == 0 and box.stop[1] < 100
    assert "z min" in box.note


def test_coarse_liver_box_thresholds_and_keeps_the_largest_component():
    fg = np.zeros((20, 50, 50), np.float16)
    fg[5:15, 10:30, 12:40] = 0.9
    fg[2:4, 45:48, 45:48] = 0.9  # a separate blob: not the liver, must not widen the box
    fg[16, 10:30, 12:40] = 0.4  # below the coarse threshold
    cascade = CascadeConfig(margin_mm=(4.0, 4.0, 4.0), min_liver_ml=1.0)
    box, liver_ml = coarse_liver_box(fg, (40, 100, 100), (1.0, 1.0, 2.0), cascade)
    assert box == liver_box(_liver_mask((20, 50, 50), (5, 10, 12), (15, 30, 40)), (40, 100, 100),
                            (1.0, 1.0, 2.0), cascade)
    assert liver_ml == pytest.approx(10 * 20 * 28 * 0.016)


def test_largest_component_keeps_only_the_biggest_blob():
    m = np.zeros((10, 10, 10), bool)
    m[1:5, 1:5, 1:5] = True
    m[7:9, 7:9, 7:9] = True
    out = largest_component(m)
    assert out.sum() == 64 and not out[8, 8, 8]
    assert not largest_component(np.zeros((3, 3, 3), bool)).any()


def test_prune_lesions_uses_the_maximum_probability_of_each_component():
    mask = np.zeros((10, 20, 20), bool)
    prob = np.zeros(mask.shape, np.float16)
    mask[2:5, 2:6, 2:6] = True   # 48 voxels, one voxel at 0.9 -> kept
    prob[2:5, 2:6, 2:6] = 0.5
    prob[3, 3, 3] = 0.9
    mask[6:8, 10:18, 10:18] = True  # 128 voxels all at 0.79 -> removed although larger
    prob[6:8, 10:18, 10:18] = 0.79
    mask[6:7, 2:4, 2:4] = True   # 4 voxels at 0.85 -> kept
    prob[6:7, 2:4, 2:4] = 0.85
    res = prune_lesions(mask, prob, 0.8)
    assert res.removed == 1 and res.removed_voxels == 128
    assert len(res.max_probability) == 2
    assert (res.components == 1).sum() == 48 and (res.components == 2).sum() == 4  # largest first
    np.testing.assert_allclose(res.max_probability, [0.9, 0.85], atol=1e-3)
    assert prune_lesions(mask, prob, 0.0).removed == 0
    assert prune_lesions(mask, prob, 0.95).components.max() == 0


def test_lesion_table_reports_physical_size_position_and_hu():
    shape = (30, 40, 40)
    k, j, i = np.indices(shape)
    spacing = (0.8, 0.8, 2.0)  # x, y, z
    centre_ijk = np.array([20.0, 18.0, 15.0])
    r_mm = 8.0
    d2 = ((i - centre_ijk[0]) * spacing[0]) ** 2 + ((j - centre_ijk[1]) * spacing[1]) ** 2 + (
        (k - centre_ijk[2]) * spacing[2]) ** 2
    comp = (d2 <= r_mm**2).astype(np.uint32)
    ct = np.where(comp > 0, 30, 100).astype(np.int16)
    m = np.eye(4)
    m[:3, :3] = np.diag(spacing)
    m[:3, 3] = (5.0, 6.0, 7.0)
    [rec] = lesion_table(comp, np.array([0.93], np.float32), ct, m, np.prod(spacing) / 1000, spacing[::-1])
    assert rec.voxels == int(comp.sum())
    assert rec.volume_ml == pytest.approx(4 / 3 * np.pi * r_mm**3 / 1000, rel=0.08)
    np.testing.assert_allclose(rec.centroid_lps, centre_ijk * spacing + (5.0, 6.0, 7.0), atol=1e-6)
    assert 2 * r_mm - 2.5 <= rec.max_diameter_mm <= 2 * r_mm
    assert rec.mean_hu == pytest.approx(30.0)
    assert rec.max_probability == pytest.approx(0.93)


def test_max_diameter_of_flat_and_tiny_sets():
    flat = np.array([[x, y, 0.0] for x in range(20) for y in range(5)])
    assert max_diameter_mm(flat) == pytest.approx(np.hypot(19, 4))
    assert max_diameter_mm(np.zeros((1, 3))) == 0.0


def test_check_segmentable_refuses_tiny_and_non_numeric_volumes():
    with pytest.raises(InputError, match="too small to segment"):
        check_segmentable(Volume(np.zeros((4, 8, 8), np.int16), (1, 1, 1), (0, 0, 0)))
    with pytest.raises(InputError, match="too small to segment"):  # enough voxels but only 16 mm wide
        check_segmentable(Volume(np.zeros((4, 32, 32), np.int16), (0.5, 0.5, 1), (0, 0, 0)))
    with pytest.raises(InputError, match="no finite voxel values"):
        check_segmentable(Volume(np.full((4, 64, 64), np.nan, np.float32), (1, 1, 1), (0, 0, 0)))
    with pytest.raises(InputError, match="not a grey-scale number"):
        check_segmentable(Volume(np.zeros((4, 64, 64), bool), (1, 1, 1), (0, 0, 0)))
    with pytest.raises(InputError, match="single value 0 everywhere"):
        check_segmentable(Volume(np.zeros((4, 64, 64), np.int16), (1, 1, 1), (0, 0, 0)))
    one_slice = np.zeros((1, 64, 64), np.int16)
    one_slice[0, 10:20, 10:20] = 50
    check_segmentable(Volume(one_slice, (1, 1, 1), (0, 0, 0)))  # one slice is allowed


def test_ct_intensity_warning():
    rng = np.random.default_rng(0)
    ct = rng.choice([-1000, -100, 50, 400], size=(8, 64, 64)).astype(np.int16)
    assert ct_intensity_warning(ct) is None
    mr = rng.uniform(0, 800, size=(8, 64, 64)).astype(np.float32)
    assert "do not look like CT" in ct_intensity_warning(mr)


def test_ct_padding_outside_the_round_field_of_view_is_not_taken_for_non_ct():
    rng = np.random.default_rng(1)
    ct = rng.choice([-1000, -100, 50, 400], size=(8, 64, 64)).astype(np.int16)
    yy, xx = np.mgrid[:64, :64]
    ct[:, (yy - 32) ** 2 + (xx - 32) ** 2 > 30 ** 2] = -3024  # a scanner's padding value, 21 % of the voxels
    assert ct_intensity_warning(ct) is None
    assert "do not look like CT" in ct_intensity_warning(np.full((8, 64, 64), -3024, np.int16) + rng.integers(
        0, 500, size=(8, 64, 64)).astype(np.int16))  # padding-range values only: still not CT
