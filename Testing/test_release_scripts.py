"""The scripts that train the shipped weights: recipes build, catalogue entries validate, folds leave their case out."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from LiverSegLib.registry import Registry
from LiverSegLib.training import release_di2in, release_weights
from LiverSegLib.training.organs import HARD_NEGATIVE_LABEL, ORGANS, hard_negative_organs
from LiverSegLib.training.synth_pool import build_pool, load_pool
from LiverSegLib.types import Volume


def test_recipes_build_with_the_stated_choices():
    coarse = release_weights.recipe("coarse", 100, 1e-2, 0)
    fine = release_weights.recipe("fine", 100, 1e-2, 0)
    assert coarse.section("loss")["hard_negative_weight"] == 4.0 and coarse.section("loss")["class_weights"] == [0.4,
                                                                                                                 1.0]
    assert coarse.section("sampler")["flip"] is False  # a flipped abdomen puts the liver on the left
    assert fine.section("synthetic_lesions") and fine.stage.has_lesion and not coarse.stage.has_lesion
    an = release_di2in.di2in_recipe(10, 2, 0)
    assert an.adversarial["k_d"] == 2 and an.adversarial["lambda"] == 0.01 and an.stage.spacing_xyz == (3.0, 3.0, 3.0)
    assert release_weights.cascade().coarse_gate_mm == 5.0
    # 1.2.0: the fine stage (trained native) runs on a fixed 1.0 mm in-plane grid; the liver is the stages' mean
    assert fine.stage.spacing_xyz == (None, None, None) and coarse.stage.spacing_xyz == (2.0, 2.0, 2.5)
    rules = release_weights.cascade()
    assert rules.coarse_liver_weight == 0.5 and rules.fine_inplane_mm == 1.0 and rules.fine_inplane_floor_mm is None
    assert rules.coarse_neck_mm == 8.0 and rules.coarse_neck_min_ml == 10.0  # 1.3.0: the heart beyond a thin neck
    # DI2IN-AN 1.1.0: han-liver's fixed fine grid, but no blend and no neck cut
    di2in = release_di2in.di2in_cascade()
    assert di2in.coarse_liver_weight == 0.0 and di2in.fine_inplane_mm == 1.0 and di2in.coarse_gate_mm == 5.0
    assert di2in.coarse_neck_mm is None


def test_catalogue_entry_validates_and_loads(tmp_path):
    loo = {"lits117": {"liver_dice": 0.9, "lesion_recall": float("nan"), "lesion_fp": 0}}
    entry = release_weights.catalogue_entry({"coarse": "a" * 64, "fine": "b" * 64}, loo, {"coarse": 1.0})
    assert entry["license"] == "CC-BY-NC-SA-4.0" and "non-commercial" in entry["licence"].lower()
    assert entry["accuracy"]["lits117"]["lesion_recall"] is None  # NaN is not JSON
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"format_version": 1, "default": entry["id"], "models": [entry]}))
    model = Registry([path]).get()
    assert model.id == "han-liver" and model.license == "CC-BY-NC-SA-4.0" and model.cascade.coarse_gate_mm == 5.0


def _organ_map() -> Volume:
    z, y, x = np.mgrid[:24, :64, :80]
    m = np.zeros((24, 64, 80), np.uint8)
    m[((y - 32) / 30.0) ** 2 + ((x - 40) / 38.0) ** 2 <= 1] = ORGANS["body"]
    m[(((y - 50) / 5.0) ** 2 + ((x - 40) / 5.0) ** 2 <= 1)] = ORGANS["bone"]
    m[(((z - 12) / 8.0) ** 2 + ((y - 30) / 14.0) ** 2 + ((x - 25) / 14.0) ** 2) <= 1] = ORGANS["liver"]
    return Volume(m, (4.0, 4.0, 5.0), (0.0, 0.0, 0.0))


def test_pool_entries_carry_their_source_and_a_fold_drops_its_own(tmp_path):
    sources = {"ircad1.19": _organ_map, "ircad1.2": _organ_map}
    paths = build_pool(tmp_path, sources, 1, "coarse", donors=None, seed=0, log=lambda s: None)
    assert [p.name for p in paths] == ["ircad1.19-0.npz", "ircad1.2-0.npz"]
    assert build_pool(tmp_path, sources, 1, "coarse", log=pytest.fail) == paths  # resumes: nothing is painted again
    entries = load_pool(tmp_path, {release_weights.POOL_SOURCE_OF["ircadb1_19"]})
    assert [e[3]["source"] for e in entries] == ["ircad1.2"]
    stage = release_weights.coarse_stage()
    cases = release_weights.pool_cases(tmp_path, stage, "ircadb1_19", 6.0)
    assert [c.name for c in cases] == ["synth:ircad1.2-0"] and cases[0].weight == 6.0
    labels = np.unique(np.asarray(cases[0].label))
    assert 1 in labels and set(labels) <= {0, 1, HARD_NEGATIVE_LABEL}  # a liver-only stage: lesions are liver
    # extra hard negatives (here the bone) are marked on top of the default organs
    with_bone = release_weights.pool_cases(tmp_path, stage, "ircadb1_19", 6.0,
                                           hard_negative_organs(["bone"]))[0].label
    plain = np.asarray(cases[0].label)
    gained = (np.asarray(with_bone) == HARD_NEGATIVE_LABEL) & (plain != HARD_NEGATIVE_LABEL)
    assert gained.sum() > 0 and set(np.unique(plain[gained])) == {0}


def test_di2in_refresh_rewrites_rules_and_accuracy_not_stages(tmp_path):
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[1] / "Resources" / "models.json"
    catalogue = tmp_path / "models.json"
    catalogue.write_text(shipped.read_text())
    for case, dice in (("ircadb1_19", 0.81234567), ("lits117", 0.9)):
        (tmp_path / "release" / case).mkdir(parents=True)
        (tmp_path / "release" / case / f"loo_di2in_an_{case}.json").write_text(json.dumps(
            {"case": case, "liver_dice": dice, "liver_assd": 3.0, "liver_rvd": 0.1, "lesion_dice": 0.5,
             "lesion_recall": float("nan"), "lesion_precision": 1.0, "lesion_fp": 2}))
    release_di2in.refresh_entry(catalogue, tmp_path / "release")
    before = {m["id"]: m for m in json.loads(shipped.read_text())["models"]}
    after = {m["id"]: m for m in json.loads(catalogue.read_text())["models"]}
    assert after.keys() == before.keys() and after["han-liver"] == before["han-liver"]
    acc = after["di2in-an-liver"].pop("accuracy")
    assert after["di2in-an-liver"].pop("version") == release_di2in.DI2IN_VERSION
    assert after["di2in-an-liver"].pop("cascade") == release_di2in.di2in_cascade().to_dict()
    for key in ("accuracy", "version", "cascade"):
        before["di2in-an-liver"].pop(key)
    assert after["di2in-an-liver"] == before["di2in-an-liver"]  # stages, their weights and ONNX exports untouched
    assert acc["ircadb1_19"]["liver_dice"] == 0.8123 and acc["lits117"]["lesion_recall"] is None
    assert "not trained: ts_example_ct, ts_example_dicom" in acc["method"]
    assert Registry([catalogue]).get("di2in-an-liver").id == "di2in-an-liver"  # still a valid catalogue


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_release_training_refuses_cuda_where_there_is_none_in_one_line(tmp_path):
    from LiverSegLib.training.release_weights import main

    with pytest.raises(SystemExit, match=r"^error: --device cuda was requested but no CUDA GPU is available here"):
        main(["--out", str(tmp_path / "out"), "--device", "cuda"])
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_release_training_refuses_an_unknown_hard_negative_in_one_line(tmp_path):
    from LiverSegLib.training.release_weights import main

    with pytest.raises(SystemExit, match=r"^error: unknown organ 'gall' \(known: "):
        main(["--out", str(tmp_path / "out"), "--extra-hard-negatives", "gall"])
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_hard_negative_weight_reaches_the_recipe_and_bad_values_are_refused(tmp_path):
    from LiverSegLib.training.release_weights import main

    assert release_weights.recipe("fine", 10, 1e-2, 0).section("loss")["hard_negative_weight"] == 2.0
    assert release_weights.recipe("coarse", 10, 1e-2, 0).section("loss")["hard_negative_weight"] == 4.0
    heavier = release_weights.recipe("fine", 10, 1e-2, 0, hard_negative_weight=6)
    assert heavier.section("loss")["hard_negative_weight"] == 6.0
    with pytest.raises(SystemExit, match=r"^error: --hard-negative-weight must be > 0, got 0.0$"):
        main(["--out", str(tmp_path / "out"), "--hard-negative-weight", "0"])
    assert not (tmp_path / "out").exists()
