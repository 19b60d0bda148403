"""Label-driven synthetic CT (synth_ct, synth_anatomy, synth_pool) and hard-negative training labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from LiverSegLib.training.organs import HARD_NEGATIVE_LABEL, ORGANS, is_liver, to_training_label
from LiverSegLib.training.synth_anatomy import add_body_layers, add_missing_organs, transplant_liver
from LiverSegLib.training.synth_ct import PHASE_HU, SynthCTConfig, paint_ct, synthesize_ct
from LiverSegLib.training.synth_thorax import add_thorax

ORG = ORGANS
SPACING = (2.0, 2.0, 2.5)


def _toy_map() -> np.ndarray:
    """A small trunk in canonical order (z superior, y posterior, x patient's left): body, spine, liver, tumour."""
    z, y, x = np.mgrid[:40, :120, :150]
    m = np.zeros((40, 120, 150), np.uint8)
    m[((y - 60) / 50.0) ** 2 + ((x - 75) / 68.0) ** 2 <= 1] = ORG["body"]
    m[(((y - 95) / 7.0) ** 2 + ((x - 75) / 7.0) ** 2 <= 1)] = ORG["bone"]
    liver = (((z - 22) / 14.0) ** 2 + ((y - 55) / 28.0) ** 2 + ((x - 45) / 28.0) ** 2) <= 1
    m[liver] = ORG["liver"]
    m[(((z - 22) / 3.0) ** 2 + ((y - 55) / 5.0) ** 2 + ((x - 40) / 5.0) ** 2) <= 1] = ORG["lesion"]
    return m


def test_phase_relations_are_plausible():
    """The relations radiologists rely on hold in the mean table before randomisation."""
    a, p, u = PHASE_HU["arterial"], PHASE_HU["portal"], PHASE_HU["unenhanced"]
    assert a[ORG["aorta"]] > a[ORG["spleen"]] > a[ORG["liver"]]
    assert p[ORG["portal_vein"]] > p[ORG["liver"]]
    assert u[ORG["liver"]] > u[ORG["spleen"]]
    assert all(PHASE_HU[ph][ORG["fat"]] < -50 for ph in PHASE_HU)


def test_missing_organs_and_layers_fill_body_only():
    rng = np.random.default_rng(0)
    m = _toy_map()
    done = add_body_layers(add_missing_organs(m, SPACING, rng), SPACING, rng)
    for organ in ("spleen", "kidney", "stomach", "fat", "muscle"):
        assert (done == ORG[organ]).any(), organ
    # liver, tumour and bone are untouched; nothing is added outside the body
    for organ in ("liver", "lesion", "bone"):
        assert np.array_equal(done == ORG[organ], m == ORG[organ]), organ
    assert np.array_equal(done == 0, m == 0)
    assert not (done == ORG["body"]).any()  # every body voxel got a tissue
    # the spleen sits on the patient's left (high x) of the liver, the kidneys posterior to the liver's centre
    assert np.argwhere(done == ORG["spleen"])[:, 2].mean() > np.argwhere(m == ORG["liver"])[:, 2].mean() + 20


def test_thorax_extends_the_map_with_lungs_and_a_heart_on_the_diaphragm():
    rng = np.random.default_rng(3)
    m = _toy_map()[:37]  # the map stops 2 slices (5 mm) above the dome, as most 3D-IRCADb mask sets do
    done = add_thorax(m, SPACING, rng, reach_mm=(60.0, 60.0))
    liver = np.argwhere(m == ORG["liver"])
    dome = liver[:, 0].max()
    # padded up to 60 mm above the dome; the original slices keep every labelled structure
    assert done.shape == (dome + 1 + 24, *m.shape[1:])
    kept = m != ORG["body"]
    assert np.array_equal(done[: m.shape[0]][kept], m[kept])
    heart, lung = np.argwhere(done == ORG["heart"]), np.argwhere(done == ORG["lung"])
    assert len(heart) > 0 and len(lung) > 0
    # the heart: left of the liver's centre and anterior of the spine, sharing the dome's upper axial slices
    assert heart[:, 0].min() <= dome < heart[:, 0].max()
    assert heart[:, 2].mean() > liver[:, 2].mean() and heart[:, 1].mean() < 95
    # a diaphragm (at least 3 mm of muscle) always lies between the heart and the liver: never touching
    from scipy import ndimage

    near_liver = ndimage.distance_transform_edt(~np.isin(done, (ORG["liver"], ORG["lesion"])),
                                                sampling=SPACING[::-1]) < 3.0
    assert not (near_liver & (done == ORG["heart"])).any()
    # lungs lie above the liver in every column they share with it, and both sides of the midline
    top = np.where((m == ORG["liver"]).any(axis=0), m.shape[0] - 1 - np.argmax((m == ORG["liver"])[::-1], axis=0), -1)
    assert (lung[:, 0] > top[lung[:, 1], lung[:, 2]]).all()
    assert (lung[:, 2] < 60).any() and (lung[:, 2] > 90).any()
    # nothing outside the body; the padded slices continue the spine
    assert (done[m.shape[0]:][:, m[-1] == 0] == 0).all() and (done[-1] == ORG["bone"]).any()
    # a map without a liver is returned unchanged
    empty = np.where(m == ORG["liver"], ORG["body"], m).astype(np.uint8)
    empty[empty == ORG["lesion"]] = ORG["body"]
    assert np.array_equal(add_thorax(empty, SPACING, rng), empty)


def test_paint_ct_values_follow_phase():
    rng = np.random.default_rng(1)
    m = add_body_layers(add_missing_organs(_toy_map(), SPACING, rng), SPACING, rng)
    cfg = SynthCTConfig(organ_jitter_hu=0.0, fatty_liver_probability=0.0, enhancement_gain=(1.0, 1.0),
                        bias_hu=(0.0, 0.0), texture_std_hu=(0.0, 0.0))
    hu, facts = paint_ct(m, SPACING, rng, cfg, phase="portal")
    liver = (m == ORG["liver"])
    assert facts["phase"] == "portal"
    assert abs(np.median(hu[liver]) - PHASE_HU["portal"][ORG["liver"]]) < 1.0
    assert np.median(hu[m == ORG["fat"]]) < -70
    assert np.all(hu[m == 0] == -1000)
    assert hu[m == ORG["bone"]].max() >= 700  # cortex
    lesion = m == ORG["lesion"]
    assert abs(np.median(hu[lesion]) - facts["lesion_hu"]) < 15.0


def test_synthesize_ct_grid_labels_and_determinism():
    m = _toy_map()
    a = synthesize_ct(m, SPACING, np.random.default_rng(5), grid_xyz=(2.5, 2.5, 3.0))
    b = synthesize_ct(m, SPACING, np.random.default_rng(5), grid_xyz=(2.5, 2.5, 3.0))
    hu, organs, spacing, facts = a
    assert spacing == (2.5, 2.5, 3.0)
    assert hu.shape == organs.shape and hu.dtype == np.float32
    assert np.array_equal(hu, b[0]) and np.array_equal(organs, b[1])
    assert is_liver(to_training_label(organs)).sum() > 1000
    assert hu.min() >= -1024 and hu.max() <= 3071
    assert facts["phase"] in PHASE_HU


def test_transplant_takes_donor_shape_and_spares_bone():
    m = _toy_map()
    donor = np.zeros((30, 60, 40), np.uint8)
    donor[5:25, 10:50, 5:35] = 1  # a box-shaped "liver"
    out = transplant_liver(m, SPACING, donor, (1.0, 1.0, 1.0), np.random.default_rng(2))
    new_liver = out == ORG["liver"]
    assert new_liver.sum() > 0.5 * (m == ORG["liver"]).sum()
    assert not (out == ORG["lesion"]).any()  # host tumours dropped
    assert np.array_equal(out == ORG["bone"], m == ORG["bone"])
    # a box fills its bounding box far more than the host ellipsoid did
    idx = np.argwhere(new_liver)
    box = np.prod(idx.max(0) - idx.min(0) + 1)
    assert new_liver.sum() / box > 0.7


def test_training_label_hard_negatives():
    m = np.array([[[ORG["liver"], ORG["lesion"], ORG["spleen"], ORG["fat"], ORG["kidney"], 0]]], np.uint8)
    assert to_training_label(m).ravel().tolist() == [1, 2, 0, 0, 0, 0]
    assert to_training_label(m, with_lesion=False).ravel().tolist() == [1, 1, 0, 0, 0, 0]
    hard = to_training_label(m, hard_negatives=True).ravel().tolist()
    assert hard == [1, 2, HARD_NEGATIVE_LABEL, 0, HARD_NEGATIVE_LABEL, 0]


def test_extra_hard_negative_organs():
    from LiverSegLib.training.organs import HARD_NEGATIVE_ORGANS, hard_negative_organs

    m = np.array([[[ORG["liver"], ORG["gallbladder"], ORG["portal_vein"], ORG["spleen"], ORG["fat"]]]], np.uint8)
    assert to_training_label(m, hard_negatives=True).ravel().tolist() == [1, 0, 0, HARD_NEGATIVE_LABEL, 0]
    extra = hard_negative_organs(["gallbladder", "portal_vein", "spleen"])  # spleen is already one: not repeated
    assert extra == HARD_NEGATIVE_ORGANS + (ORG["gallbladder"], ORG["portal_vein"])
    hard = to_training_label(m, hard_negatives=True, negative_organs=extra).ravel().tolist()
    assert hard == [1, HARD_NEGATIVE_LABEL, HARD_NEGATIVE_LABEL, HARD_NEGATIVE_LABEL, 0]
    assert hard_negative_organs() == HARD_NEGATIVE_ORGANS
    with pytest.raises(ValueError, match="unknown organ 'galbladder'"):
        hard_negative_organs(["galbladder"])
    with pytest.raises(ValueError, match="'lesion' cannot be a hard negative"):
        hard_negative_organs(["lesion"])


def test_hard_negative_weight_in_loss():
    from LiverSegLib.training.losses import WeightedCrossEntropy, build_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 2, 6, 6)
    target = torch.randint(0, 2, (2, 6, 6))
    target[0, :3] = HARD_NEGATIVE_LABEL
    plain = target.where(target != HARD_NEGATIVE_LABEL, torch.zeros_like(target))
    same = WeightedCrossEntropy((0.4, 1.0), 2)(logits, target)
    assert torch.allclose(same, WeightedCrossEntropy((0.4, 1.0), 2)(logits, plain))
    weighted = build_loss({"name": "weighted_ce", "class_weights": [0.4, 1.0], "hard_negative_weight": 4.0}, 2)
    # by hand: voxel weights 0.4 (bg), 1.0 (liver), 1.6 (hard bg); weighted mean of the per-voxel CE
    ce = torch.nn.functional.cross_entropy(logits, plain, reduction="none")
    w = torch.tensor([0.4, 1.0])[plain]
    w = torch.where(target == HARD_NEGATIVE_LABEL, w * 4.0, w)
    assert torch.allclose(weighted(logits, target), (w * ce).sum() / w.sum())
    with pytest.raises(ValueError, match="hard_negative_weight"):
        WeightedCrossEntropy((0.4, 1.0), 2, hard_negative_weight=0.0)


def _heart_map() -> np.ndarray:
    m = _toy_map()
    z, y, x = np.mgrid[:40, :120, :150]
    m[((((z - 30) / 8.0) ** 2 + ((y - 40) / 20.0) ** 2 + ((x - 100) / 22.0) ** 2) <= 1) & (m == ORG["body"])] = \
        ORG["heart"]
    return m


@pytest.mark.parametrize("phase", ["arterial", "portal"])
def test_detailed_heart_has_a_wall_around_blood_or_is_liver_grey(phase):
    m = _heart_map()
    heart = m == ORG["heart"]
    cfg = SynthCTConfig(heart_detail=True, heart_iso_probability=0.0, texture_std_hu=(0.0, 0.0),
                        bias_hu=(0.0, 0.0), organ_jitter_hu=0.0, enhancement_gain=(1.0, 1.0))
    hu, _ = paint_ct(m, SPACING, np.random.default_rng(1), cfg, phase=phase)
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(heart, sampling=SPACING[::-1])
    rim, core = hu[heart & (depth <= 2.5)], hu[heart & (depth > 12.0)]
    # the myocardium enhances about like the liver; the blood pools (most of the core) are brighter
    liver = np.median(hu[m == ORG["liver"]])
    assert abs(np.median(rim) - liver) < 60 and abs(np.median(rim) - liver) < abs(np.median(core) - liver)
    assert np.median(core) > np.median(rim) + 20
    # plain painting (the shipped recipe) keeps one value for the whole heart
    flat, _ = paint_ct(m, SPACING, np.random.default_rng(1), SynthCTConfig(texture_std_hu=(0.0, 0.0),
                                                                           bias_hu=(0.0, 0.0)), phase=phase)
    assert np.ptp(flat[heart]) == 0
    # the hard case: the whole heart as grey as the liver
    iso, _ = paint_ct(m, SPACING, np.random.default_rng(1), SynthCTConfig(
        heart_detail=True, heart_iso_probability=1.0, texture_std_hu=(0.0, 0.0), bias_hu=(0.0, 0.0)), phase=phase)
    assert np.ptp(iso[heart]) == 0 and abs(float(iso[heart][0]) - float(np.median(iso[m == ORG["liver"]]))) < 45
