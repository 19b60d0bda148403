"""The neck cut on real CT with the shipped han-liver coarse stage: HCC_006's heart goes, ircadb1_19's liver stays.

HCC-TACE-Seg HCC_006 (unlabelled, never in training) is the series on which the coarse stage joined the whole heart
to the liver dome through the diaphragm; ircadb1_19 is a labelled case on which the rule must cut nothing. Both
live in ``../shared/data`` beside a development checkout; the test skips without them.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from LiverSegLib.data.samples import load_case, shared_data_dir
from LiverSegLib.pipeline.box import coarse_liver, coarse_voxel_ml
from LiverSegLib.pipeline.geometry import to_canonical
from LiverSegLib.pipeline.predictor import Predictor, _Reporter


def _coarse(volume):
    """The shipped coarse stage's probabilities on the canonical volume (the predictor's own step)."""
    predictor = Predictor("han-liver", device="cpu")
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
    assert cascade.coarse_neck_mm == 8.0  # the shipped rule
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


def test_a_labelled_liver_loses_nothing():
    shared = shared_data_dir()
    if shared is None or not (shared / "ircadb1_19" / "ct.nii.gz").is_file():
        pytest.skip("ircadb1_19 lives only in ../shared/data beside a development checkout (absent here)")
    ct, _ = load_case("ircadb1_19")
    cascade, fg, canonical = _coarse(ct)
    shape, spacing = canonical.array_zyx.shape, canonical.spacing_xyz
    assert np.array_equal(coarse_liver(fg, shape, spacing, cascade),
                          coarse_liver(fg, shape, spacing, replace(cascade, coarse_neck_mm=None)))
