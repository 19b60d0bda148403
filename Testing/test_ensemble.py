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
def test_the_ensemble_exports_as_one_onnx_graph_that_matches_torch_members_included(tmp_path):
    from LiverSegLib.training.export_onnx import export_stage

    members = _members(tmp_path)
    combine_checkpoints(members, tmp_path / "ens.pt")
    stage = release_weights.stage_for_file(model_from_checkpoint(members[0]).coarse, tmp_path / "ens.pt")
    export = export_stage(stage, tmp_path / "ens.pt", tmp_path / "ens.onnx")
    stage = replace(stage, onnx=export)
    grid, z = _grid()
    reference = StageModel(stage, tmp_path / "ens.pt", torch.device("cpu")).predict(grid, z, keep_members=True)
    out = OnnxStage(stage, tmp_path / "ens.onnx", "openvino", "fp32").predict(grid, z, keep_members=True)
    assert np.abs(out.foreground.astype(np.float32) - reference.foreground).max() < 0.01
    assert np.abs(out.lesion.astype(np.float32) - reference.lesion).max() < 0.01
    # the graph carries each member, so the cascade's member union works on the ONNX engines too
    assert np.abs(out.members.astype(np.float32) - reference.members).max() < 0.01


def test_an_ensemble_stage_returns_each_members_foreground_when_asked(tmp_path):
    members = _members(tmp_path)
    combine_checkpoints(members, tmp_path / "ens.pt")
    base = model_from_checkpoint(members[0]).coarse
    stage = release_weights.stage_for_file(base, tmp_path / "ens.pt")
    assert stage.members == 2 and base.members == 1
    grid, z = _grid()
    singles = [StageModel(base, p, torch.device("cpu"), verify=False).predict(grid, z) for p in members]
    ens = StageModel(stage, tmp_path / "ens.pt", torch.device("cpu"))
    assert ens.predict(grid, z).members is None  # only kept on request: the fine stage's box can be large
    out = ens.predict(grid, z, keep_members=True)
    assert out.members.shape == (2, *out.foreground.shape) and out.members.dtype == np.float16
    for i in range(2):
        assert np.abs(out.members[i].astype(np.float32) - singles[i].foreground).max() < 2e-3
    assert np.abs(out.members.astype(np.float32).mean(0) - out.foreground).max() < 2e-3


def test_fold_members_recovers_the_members_and_their_mean_from_the_softmax():
    from LiverSegLib.pipeline.stage import fold_members

    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3), size=(2, 4, 5)).transpose(0, 3, 1, 2)  # member 1: (B=2, C=3, 4, 5)
    q = rng.dirichlet(np.ones(3), size=(2, 4, 5)).transpose(0, 3, 1, 2)
    logits = torch.from_numpy(np.concatenate([np.log(p), np.log(q)], axis=1))
    mean, fg = fold_members(torch.softmax(logits, dim=1), 2)  # what every runtime does to a stage's output
    assert torch.allclose(mean, torch.from_numpy((p + q) / 2), atol=1e-6)
    assert torch.allclose(fg[:, 0], torch.from_numpy(1 - p[:, 0]), atol=1e-6)
    assert torch.allclose(fg[:, 1], torch.from_numpy(1 - q[:, 0]), atol=1e-6)
    mean_np, _ = fold_members(torch.softmax(logits, dim=1).numpy(), 2)
    assert np.allclose(mean_np, (p + q) / 2, atol=1e-6)
    same, none = fold_members(torch.from_numpy(p), 1)
    assert none is None and torch.equal(same, torch.from_numpy(p))


def test_the_members_mean_cannot_join_what_each_member_kept_apart():
    """Member A keeps a blob (think heart) apart as its own component; member B joins a bridge to the liver but
    barely sees the blob. Their plain mean joins liver, bridge and blob into one component; within the union of
    the members' own livers the blob stays out and the liver (and bridge) stay in."""
    from LiverSegLib.config import CascadeConfig
    from LiverSegLib.pipeline.box import coarse_liver
    from LiverSegLib.pipeline.predictor import _within_member_livers
    from LiverSegLib.pipeline.stage import StageOutput
    from LiverSegLib.types import Volume

    shape = (12, 30, 30)
    liver, bridge, blob = (np.zeros(shape, bool) for _ in range(3))
    liver[2:10, 4:14, 4:20] = True
    bridge[5:7, 14:18, 10:13] = True
    blob[3:9, 18:27, 6:18] = True
    a = np.where(liver, 0.95, np.where(blob, 0.9, np.where(bridge, 0.3, 0.02)))
    b = np.where(liver, 0.95, np.where(bridge, 0.9, np.where(blob, 0.3, 0.02)))
    ct = Volume(np.zeros(shape, np.int16), (2.0, 2.0, 2.5), (0.0, 0.0, 0.0), np.eye(3))
    cascade = CascadeConfig()
    mean = ((a + b) / 2).astype(np.float16)
    assert coarse_liver(mean, shape, ct.spacing_xyz, cascade)[blob].all()  # the failure the rule is for
    kept = _within_member_livers(StageOutput(mean, None, np.stack([a, b]).astype(np.float16)), ct, cascade)
    joined = coarse_liver(kept, shape, ct.spacing_xyz, cascade)
    assert not joined[blob].any() and joined[liver].all() and joined[bridge].all()
    assert kept.dtype == np.float16 and np.array_equal(kept[liver], mean[liver])


def test_the_predictor_applies_the_member_union_to_an_ensemble_coarse_stage_only_when_configured(tmp_path):
    from cli_fixtures import SHAPE, SPACING

    from LiverSegLib.config import CascadeConfig
    from LiverSegLib.data.phantoms import make_phantom
    from LiverSegLib.pipeline.box import coarse_liver
    from LiverSegLib.pipeline.geometry import to_canonical
    from LiverSegLib.pipeline.predictor import Predictor, _Reporter

    members = _members(tmp_path)
    combine_checkpoints(members, tmp_path / "ens.pt")
    ct, _ = make_phantom(SHAPE, SPACING, seed=3)
    canonical, _ = to_canonical(ct)
    runs = {}
    for name, path in (("a", members[0]), ("b", members[1]), ("ens", tmp_path / "ens.pt")):
        predictor = Predictor.from_checkpoint(path, device="cpu", runtime="torch")
        runs[name] = predictor._run_coarse(canonical, _Reporter(None))[0]
    cascade = predictor.model.cascade
    assert cascade.coarse_member_union
    union = np.zeros(runs["a"].shape, bool)
    for name in ("a", "b"):
        union |= coarse_liver(runs[name], canonical.array_zyx.shape, canonical.spacing_xyz, cascade)
    mean = (runs["a"].astype(np.float32) + runs["b"]) / 2
    assert 0 < union.sum() < union.size
    assert np.abs(runs["ens"][union] - mean[union]).max() < 2e-3 and not runs["ens"][~union].any()
    predictor.model = replace(predictor.model, cascade=CascadeConfig(coarse_member_union=False))
    plain = predictor._run_coarse(canonical, _Reporter(None))[0]
    assert np.abs(plain.astype(np.float32) - mean).max() < 2e-3


def test_a_3d_ensemble_stage_gives_its_members_and_their_mean():
    """DI2IN members (3D, sliding windows): the same folding as the slice stages."""
    from LiverSegLib.config import NetworkSpec, StageConfig
    from LiverSegLib.networks import DI2IN

    kwargs = {"in_channels": 1, "out_channels": 2, "features": [4, 8, 16], "branch_levels": [2, 1, 0]}
    spec = {"name": "DI2IN", "kwargs": kwargs}

    def stage(network: NetworkSpec) -> StageConfig:
        return StageConfig(network, "x.pt", "0" * 64, (0, 1), (-160.0, 240.0), context_slices=1, batch_cpu=1)

    torch.manual_seed(0)
    members = [DI2IN(**kwargs).eval(), DI2IN(**kwargs).eval()]
    ensemble = MeanEnsemble(spec, 2).eval()
    for target, source in zip(ensemble.members, members, strict=True):
        target.load_state_dict(source.state_dict())
    grid = np.random.default_rng(1).uniform(-1, 1, (16, 24, 20)).astype(np.float32)
    z = np.arange(3, 13)
    cpu = torch.device("cpu")
    singles = [StageModel.from_network(stage(NetworkSpec("DI2IN", kwargs)), m, cpu).predict(grid, z) for m in members]
    ens_stage = stage(NetworkSpec("MeanEnsemble", {"member": spec, "count": 2}))
    out = StageModel.from_network(ens_stage, ensemble, cpu).predict(grid, z, keep_members=True)
    assert np.abs(singles[0].foreground.astype(np.float32) - singles[1].foreground).max() > 0.01
    for i in range(2):
        assert np.abs(out.members[i].astype(np.float32) - singles[i].foreground).max() < 2e-3
    mean = (singles[0].foreground.astype(np.float32) + singles[1].foreground) / 2
    assert np.abs(out.foreground.astype(np.float32) - mean).max() < 2e-3
