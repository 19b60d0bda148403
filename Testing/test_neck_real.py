"""The heart above the liver dome on real CT: the neck cut, and the shipped model that learned to leave it out.

HCC-TACE-Seg HCC_006 (unlabelled) is the series on which han-liver 1.3.0's coarse stage (never trained on it; kept in
the catalogue as ``han-liver-1.3``) joined the whole heart to the liver dome through the diaphragm, and its neck cut
takes it off again. han-liver 1.4.0's coarse stage learned from pseudo-labels of HCC_006 and three HCC_009 series, so
it is tested on HCC_009_s103, the series left out of its pseudo-labels, whose top 12 slices lie in the heart (1.3.0
labels about 0.24 L of it liver). ircadb1_19 is a labelled case on which the rule must cut nothing. All live in
``../shared/data`` beside a development checkout; the tests skip without them.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from LiverSegLib.data.samples import load_case, shared_data_dir
from LiverSegLib.pipeline.box import coarse_liver, coarse_voxel_ml
from LiverSegLib.pipeline.geometry import to_canonical
from LiverSegLib.pipeline.predictor import Predictor, _Reporter


def _coarse(volume, model: str = "han-liver-1.3"):
    """A catalogue model's coarse-stage probabilities on the canonical volume (the predictor's own step)."""
    predictor = Predictor(model, device="cpu")
    canonical, _ = to_canonical(volume)
    fg, _ = predictor._run_coarse(canonical, _Reporter(None))  # the coarse stage alone: a few seconds
    return predictor.model.cascade, fg, canonical


def _series(name: str):
    shared = shared_data_dir()
    path = shared / "hcc_tace_unlabelled" / f"{name}.nii.gz" if shared is not None else None
    if path is None or not path.is_file():
        pytest.skip("the HCC-TACE-Seg series live only in ../shared/data beside a development checkout (absent here)")
    from LiverSegLib.training.mask_sources import read_unlabelled

    return read_unlabelled(path)


def test_the_heart_joined_to_the_dome_is_cut_off():
    cascade, fg, canonical = _coarse(_series("HCC_006_s103"))
    assert cascade.coarse_neck_mm == 8.0  # the shipped rule (1.3.0 and 1.4.0)
    shape, spacing = canonical.array_zyx.shape, canonical.spacing_xyz
    whole = coarse_liver(fg, shape, spacing, replace(cascade, coarse_neck_mm=None))
    kept = coarse_liver(fg, shape, spacing, cascade)
    ml = coarse_voxel_ml(shape, spacing, fg.shape)
    cut = whole & ~kept
    assert np.all(whole[kept])  # only removes
    assert 0.4 < cut.sum() * ml / 1000.0 < 1.2  # a heart's volume (0.70 L measured)
    assert 1.2 < kept.sum() * ml / 1000.0 < 2.4  # the liver stays
    # the cut part lies above the liver's centre and to the patient's left of it (canonical z up, x left)
    (zc, _, xc), (zl, _, xl) = np.argwhere(cut).mean(axis=0), np.argwhere(kept).mean(axis=0)
    assert zc > zl + 10 and xc > xl


def test_the_shipped_model_leaves_the_heart_of_a_series_it_did_not_learn_from():
    ct = _series("HCC_009_s103")
    shipped, previous = (Predictor(m, device="cpu").predict(ct) for m in ("han-liver", "han-liver-1.3"))
    top_ml = []
    for result in (shipped, previous):
        canonical, _ = to_canonical(result.labelmap)  # z up: the last slices are the scan's top, in the heart
        top_ml.append(np.count_nonzero(np.asarray(canonical.array_zyx)[-12:]) * ct.voxel_volume_ml)
    assert top_ml[1] > 150  # 1.3.0: 242 mL of liver label there (measured), most of it heart
    assert top_ml[0] < 60  # 1.4.0: 20 mL (measured): the dome's tip at most
    assert 2.0 < shipped.liver_volume_ml / 1000.0 < 3.2  # the liver itself stays (2.6 L)


@pytest.mark.parametrize("model", ["han-liver", "han-liver-1.3"])
def test_a_labelled_liver_loses_nothing(model):
    shared = shared_data_dir()
    if shared is None or not (shared / "ircadb1_19" / "ct.nii.gz").is_file():
        pytest.skip("ircadb1_19 lives only in ../shared/data beside a development checkout (absent here)")
    ct, _ = load_case("ircadb1_19")
    cascade, fg, canonical = _coarse(ct, model)
    shape, spacing = canonical.array_zyx.shape, canonical.spacing_xyz
    assert np.array_equal(coarse_liver(fg, shape, spacing, cascade),
                          coarse_liver(fg, shape, spacing, replace(cascade, coarse_neck_mm=None)))
