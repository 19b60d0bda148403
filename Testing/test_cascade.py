"""The whole cascade on synthetic phantoms with a tiny model trained inside the test.

Shows that each step of Han's post-processing changes the result where it should: lesion pruning by maximum
probability, the largest liver component, and the whole-volume fallback of the liver box.
"""

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from LiverSegLib.config import CascadeConfig, ModelConfig, NetworkSpec, StageConfig
from LiverSegLib.data.phantoms import make_phantom
from LiverSegLib.metrics import evaluate_case
from LiverSegLib.pipeline.predictor import Predictor
from LiverSegLib.pipeline.stage import StageModel
from LiverSegLib.training.han_trainer import HanRecipe, train_stage
from LiverSegLib.training.slices import SliceSampler, prepare_case
from LiverSegLib.types import Volume

SHAPE, SPACING = (24, 80, 96), (2.0, 2.0, 3.0)
HU = (-160.0, 240.0)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A 3-class tiny network trained for a few seconds on phantoms with Han's recipe (larger learning rate)."""
    folder = tmp_path_factory.mktemp("tiny")
    stage = StageConfig(NetworkSpec("HanResUNet2p5D", {"in_channels": 5, "out_channels": 3, "features": [8, 16, 32]}),
                        "tiny.pt", "0" * 64, (0, 1, 2), HU, (None, None, None), batch_cpu=32)
    cases = [prepare_case(f"p{s}", *make_phantom(SHAPE, SPACING, seed=s, n_lesions=(2, 4)), HU, (None, None, None),
                          merge_lesion=False) for s in range(4)]
    sampler = SliceSampler(cases, crop=64, liver_slices_only=True, foreground_crop_prob=0.9, seed=0)
    recipe = HanRecipe(lr=0.05, epochs=8, steps_per_epoch=25, batch=8, crop=64, seed=0)
    _, sha = train_stage(stage, sampler, recipe, str(folder / "tiny.pt"), log=lambda s: None)
    stage = replace(stage, sha256=sha)
    return ModelConfig("tiny", "0", "tiny", coarse=stage, fine=stage,
                       cascade=CascadeConfig(margin_mm=(6.0, 6.0, 6.0), min_liver_ml=5.0), weights_dir=str(folder))


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(SHAPE, SPACING, seed=101, n_lesions=(3, 3))


def test_cascade_segments_an_unseen_phantom(tiny_model, phantom):
    ct, ref = phantom
    result = Predictor(tiny_model, device="cpu").predict(ct)
    assert result.labelmap.same_grid(ct) and result.labelmap.array_zyx.dtype == np.uint8
    scores = evaluate_case(result.labelmap.array_zyx, ref.array_zyx, ct.spacing_xyz[::-1])
    assert scores["liver_dice"] > 0.85
    assert result.details["box_fallback"] is None
    assert result.liver_volume_ml == pytest.approx(np.count_nonzero(result.labelmap.array_zyx) * ct.voxel_volume_ml)
    assert set(result.timings_s) >= {"coarse", "box", "fine", "post"}


@pytest.fixture(scope="module")
def graded_lesions():
    """A lesion-free phantom with three separate spherical lesions of decreasing contrast (90, 55 and 30 HU below
    the liver), so the network is sure of some and unsure of others."""
    ct, label = make_phantom(SHAPE, SPACING, seed=7, n_lesions=(0, 0))
    liver = label.array_zyx == 1
    depth = ndimage.distance_transform_edt(liver, sampling=SPACING[::-1])
    zz, yy, xx = np.indices(liver.shape)
    a, lab = ct.array_zyx.copy(), label.array_zyx.copy()
    liver_hu = float(np.median(a[liver]))
    centres = []
    for idx in np.argsort(-depth, axis=None):
        c = np.array(np.unravel_index(idx, liver.shape))
        if depth[tuple(c)] < 9.0 or len(centres) == 3:
            break
        if all(np.linalg.norm((c - o) * SPACING[::-1]) > 26.0 for o in centres):
            centres.append(c)
    assert len(centres) == 3, "the phantom liver is too small for three separate lesions"
    for c, contrast in zip(centres, (90, 55, 30), strict=True):
        ball = ((zz - c[0]) * SPACING[2]) ** 2 + ((yy - c[1]) * SPACING[1]) ** 2 + ((xx - c[2]) * SPACING[0]) ** 2 < 49
        a[ball] = np.int16(liver_hu - contrast)
        lab[ball] = 2
    return ct.with_array(a), label.with_array(lab)


def test_lesion_pruning_changes_the_result(tiny_model, graded_lesions):
    ct, _ = graded_lesions
    predictor = Predictor(tiny_model, device="cpu")
    everything = predictor.predict(ct, lesion_threshold=0.0)
    maxima = sorted(r.max_probability for r in everything.lesions)
    assert len(maxima) >= 2 and maxima[0] < maxima[-1], f"expected lesion candidates of graded certainty: {maxima}"
    cut = (maxima[0] + maxima[-1]) / 2
    pruned = predictor.predict(ct, lesion_threshold=cut)
    assert 0 < len(pruned.lesions) < len(everything.lesions)
    assert all(r.max_probability >= cut for r in pruned.lesions)
    assert pruned.details["lesions_removed_by_threshold"] == len(everything.lesions) - len(pruned.lesions)
    # pruned lesion voxels become liver: the liver stays the same, the lesion volume shrinks
    assert pruned.liver_volume_ml == pytest.approx(everything.liver_volume_ml)
    assert pruned.lesion_volume_ml < everything.lesion_volume_ml


def test_largest_component_removes_a_liver_like_blob(tiny_model, phantom):
    ct, _ = phantom
    a = ct.array_zyx.copy()
    # a liver-textured blob in the left body wall, far from the liver, on a few slices inside the liver's z-range
    liver_hu = int(np.median(ct.array_zyx[_ref_liver(phantom)]))
    a[8:14, 30:40, 70:80] = liver_hu
    blob_ct = ct.with_array(a)
    predictor = Predictor(replace(tiny_model, cascade=replace(tiny_model.cascade, min_liver_ml=1e9)), device="cpu")
    raw = StageModel(tiny_model.fine, tiny_model.weight_path(tiny_model.fine.weights), predictor.device)
    from LiverSegLib.pipeline.orientation import to_canonical
    from LiverSegLib.pipeline.stage import normalize_hu

    canonical, orient = to_canonical(blob_ct)
    grid = normalize_hu(np.asarray(canonical.array_zyx, np.float32).copy(), HU)
    out = raw.predict(grid, np.arange(grid.shape[0]))
    raw_fg = orient.invert(out.foreground > 0.5)
    assert raw_fg[8:14, 30:40, 70:80].mean() > 0.5, "the network alone calls the blob liver"
    final = predictor.predict(blob_ct).labelmap.array_zyx
    assert final[8:14, 30:40, 70:80].max() == 0, "the largest 3D component drops it"


def test_box_fallback_recovers_liver_the_coarse_stage_missed(tiny_model, phantom, monkeypatch):
    """A coarse stage that found only the upper half of the liver (failure injected on purpose): trusting its box
    cuts the liver, the whole-volume fallback for a coarse liver deemed too small recovers it."""
    ct, ref = phantom
    liver = ref.array_zyx > 0
    half_mass = int(np.searchsorted(np.cumsum(liver.sum(axis=(1, 2))), liver.sum() / 2))
    partial = liver.copy()
    partial[:half_mass] = False  # the coarse stage "missed" the lower half; canonical order = stored (identity)

    def fake_coarse(self, canonical, report, spacing_override=None):
        return partial.astype(np.float16), canonical.array_zyx.shape

    monkeypatch.setattr(Predictor, "_run_coarse", fake_coarse)
    partial_ml = partial.sum() * ct.voxel_volume_ml
    trusted = replace(tiny_model.cascade, min_liver_ml=0.5 * partial_ml)
    boxed = Predictor(replace(tiny_model, cascade=trusted), device="cpu").predict(ct)
    untrusted = replace(tiny_model.cascade, min_liver_ml=2.0 * partial_ml)
    whole = Predictor(replace(tiny_model, cascade=untrusted), device="cpu").predict(ct)
    assert boxed.details["box_fallback"] is None
    assert "tiny" in whole.details["box_fallback"] and any("whole volume" in w for w in whole.warnings)
    box_start = boxed.details["box_canonical_zyx"]["start"][0]
    ref_below = liver[:box_start]
    assert ref_below.sum() > 0.2 * liver.sum(), "the injected coarse miss should leave liver outside the box"
    assert boxed.labelmap.array_zyx[:box_start].max() == 0, "trusting the box cuts the liver at its edge"
    recovered = (whole.labelmap.array_zyx[:box_start] > 0) & ref_below
    assert recovered.sum() > 0.7 * ref_below.sum(), "the whole-volume fallback finds the rest of the liver"
    spacing = ct.spacing_xyz[::-1]
    d_box = evaluate_case(boxed.labelmap.array_zyx, ref.array_zyx, spacing)["liver_dice"]
    d_whole = evaluate_case(whole.labelmap.array_zyx, ref.array_zyx, spacing)["liver_dice"]
    assert d_whole > d_box


def test_same_result_whatever_the_stored_orientation(tiny_model, phantom):
    ct, _ = phantom
    predictor = Predictor(tiny_model, device="cpu")
    base = predictor.predict(ct).labelmap.array_zyx
    # the same voxels stored coronal-first with reversed rows: direction and origin rewritten to match
    a = np.transpose(ct.array_zyx, (1, 0, 2))[:, ::-1, :]
    d = ct.direction[:, [0, 2, 1]] * np.array([1, -1, 1])
    origin = ct.index_to_physical(np.array([0.0, 0.0, ct.array_zyx.shape[0] - 1]))
    stored = Volume(np.ascontiguousarray(a), (ct.spacing_xyz[0], ct.spacing_xyz[2], ct.spacing_xyz[1]),
                    tuple(origin), d)
    out = predictor.predict(stored).labelmap.array_zyx
    back = np.transpose(out[:, ::-1, :], (1, 0, 2))
    assert np.array_equal(back, base)


def _ref_liver(phantom):
    return phantom[1].array_zyx == 1
