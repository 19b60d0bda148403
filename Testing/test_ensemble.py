"""A stage as the mean of several trained networks: MeanEnsemble, its packed checkpoint, its ONNX export."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_fixtures import make_tiny_checkpoint

from LiverSegLib.config import ModelConfig
from LiverSegLib.errors import ModelError
from LiverSegLib.networks import MeanEnsemble
from LiverSegLib.pipeline.checkpoint_model import model_from_checkpoint
from LiverSegLib.pipeline.onnx_stage import OnnxStage, engine_available
from LiverSegLib.pipeline.stage import StageModel
from LiverSegLib.training import release_weights
from LiverSegLib.training.ensemble_weights import combine_checkpoints, main
from LiverSegLib.weights import load_checkpoint, save_checkpoint, sha256_file


def _members(tmp_path: Path) -> list[Path]:
    """The tiny checkpoint and a second one with clearly different weights (same stage)."""
    first = make_tiny_checkpoint(tmp_path)
    ckpt = load_checkpoint(first)
    gen = torch.Generator().manual_seed(1)
    state = {k: v + 0.3 * torch.randn(v.shape, generator=gen) * v.std() if v.is_floating_point() and v.numel() > 1
             else v for k, v in ckpt["state_dict"].items()}
    second = tmp_path / "tiny2.pt"
    save_checkpoint(second, ckpt["config"], state, {"run": 2})
    return [first, second]


def _grid() -> tuple[np.ndarray, np.ndarray]:
    return np.random.default_rng(0).uniform(-1, 1, (7, 36, 40)).astype(np.float32), np.arange(7)


def test_the_ensemble_stage_gives_the_mean_of_its_members_probabilities(tmp_path):
    members = _members(tmp_path)
    sha = combine_checkpoints(members, tmp_path / "ens.pt")
    assert sha == sha256_file(tmp_path / "ens.pt")
    meta = load_checkpoint(tmp_path / "ens.pt")["metadata"]["ensemble_of"]
    assert [m["file"] for m in meta] == ["tiny.pt", "tiny2.pt"] and meta[1]["run"] == 2
    assert meta[0]["sha256"] == sha256_file(members[0])

    base = model_from_checkpoint(members[0]).coarse
    stage = release_weights.stage_for_file(base, tmp_path / "ens.pt")
    assert stage.network.name == "MeanEnsemble" and stage.network.kwargs["count"] == 2
    assert stage.network.kwargs["member"]["name"] == base.network.name and stage.sha256 == sha
    grid, z = _grid()
    outs = [StageModel(base if i < 2 else stage, p, torch.device("cpu"), verify=i == 2).predict(grid, z)
            for i, p in enumerate([*members, tmp_path / "ens.pt"])]
    # the members differ, so the test could not pass by one member standing in for the mean
    assert np.abs(outs[0].foreground - outs[1].foreground).max() > 0.05
    for part in ("foreground", "lesion"):
        mean = (getattr(outs[0], part).astype(np.float32) + getattr(outs[1], part)) / 2
        assert np.abs(getattr(outs[2], part).astype(np.float32) - mean).max() < 2e-3  # float16 outputs


def test_an_ensemble_entry_survives_the_catalogue_round_trip(tmp_path):
    members = _members(tmp_path)
    combine_checkpoints(members, tmp_path / "han_liver_coarse.pt")
    coarse = release_weights.stage_for_file(release_weights.coarse_stage(), tmp_path / "han_liver_coarse.pt")
    entry = release_weights.catalogue_entry({"coarse": coarse.sha256, "fine": "0" * 64}, {}, {}, {"coarse": coarse})
    again = ModelConfig.from_dict(entry, weights_dir=str(tmp_path))
    assert again.coarse.network.to_dict() == coarse.network.to_dict()
    assert again.coarse.sha256 == coarse.sha256


def test_bad_ensembles_are_refused_in_one_line(tmp_path):
    members = _members(tmp_path)
    with pytest.raises(ModelError, match="at least 2 checkpoints"):
        combine_checkpoints(members[:1], tmp_path / "one.pt")
    ckpt = load_checkpoint(members[1])
    save_checkpoint(tmp_path / "liver_only.pt", {**ckpt["config"], "classes": [0, 1]}, ckpt["state_dict"])
    with pytest.raises(ModelError, match=r"liver_only.pt was made for classes \[0, 1\].*same stage"):
        combine_checkpoints([members[0], tmp_path / "liver_only.pt"], tmp_path / "mixed.pt")
    assert not (tmp_path / "mixed.pt").exists()
    combine_checkpoints(members, tmp_path / "ens.pt")
    with pytest.raises(ModelError, match="already an ensemble"):
        combine_checkpoints([tmp_path / "ens.pt", members[0]], tmp_path / "nested.pt")
    with pytest.raises(SystemExit, match="^error: an ensemble needs at least 2 checkpoints, got 1$"):
        main(["--out", str(tmp_path / "x.pt"), str(members[0])])
    with pytest.raises(ValueError, match="at least 2 members"):
        MeanEnsemble({"name": "HanResUNet2p5D", "kwargs": {}}, 1)


@pytest.mark.skipif(not engine_available("onnx"), reason="the onnx package (dev extra) exports models")
def test_the_ensemble_exports_as_one_onnx_graph_that_matches_torch(tmp_path):
    from LiverSegLib.training.export_onnx import export_stage

    members = _members(tmp_path)
    combine_checkpoints(members, tmp_path / "ens.pt")
    stage = release_weights.stage_for_file(model_from_checkpoint(members[0]).coarse, tmp_path / "ens.pt")
    export = export_stage(stage, tmp_path / "ens.pt", tmp_path / "ens.onnx")
    stage = replace(stage, onnx=export)
    grid, z = _grid()
    reference = StageModel(stage, tmp_path / "ens.pt", torch.device("cpu")).predict(grid, z)
    out = OnnxStage(stage, tmp_path / "ens.onnx", "openvino", "fp32").predict(grid, z)
    assert np.abs(out.foreground.astype(np.float32) - reference.foreground).max() < 0.01
    assert np.abs(out.lesion.astype(np.float32) - reference.lesion).max() < 0.01
