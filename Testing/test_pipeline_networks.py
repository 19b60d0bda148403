"""The new networks inside the inference pipeline: DI2IN as the coarse stage (chosen in models.json), the Mixed U-Net
with histogram equalisation as a single-network model, 3D sliding-window inference."""

from __future__ import annotations

import json

import numpy as np
import torch

from LiverSegLib.config import NetworkSpec, StageConfig
from LiverSegLib.data.phantoms import make_phantom
from LiverSegLib.networks import build_network
from LiverSegLib.pipeline.predictor import Predictor
from LiverSegLib.pipeline.stage import StageModel, stage_config_dict, stage_grid
from LiverSegLib.registry import Registry
from LiverSegLib.weights import save_checkpoint

DI2IN_KW = {"in_channels": 1, "out_channels": 2, "features": [4, 8, 16], "branch_levels": [2, 0]}
HAN_KW = {"in_channels": 5, "out_channels": 3, "features": [4, 8, 16]}
MIXED_KW = {"in_channels": 1, "out_channels": 3, "features": [4, 8, 16], "dropout": 0.0}


def _stage(name, kwargs, classes, spacing, context, normalization="window", window=(-160.0, 240.0)):
    return StageConfig(NetworkSpec(name, kwargs), "x.pt", "0" * 64, classes, window, spacing, context,
                       normalization=normalization)


def _save(folder, stage, seed=0):
    torch.manual_seed(seed)
    net = build_network(stage.network.name, stage.network.kwargs)
    path = folder / f"{stage.network.name}.pt"
    return path, save_checkpoint(path, stage_config_dict(stage), net.state_dict(), {"id": stage.network.name})


def _entry(stage, weights, sha):
    d = stage_config_dict(stage)
    return {"network": d["network"], "weights": weights, "sha256": sha, "classes": d["classes"],
            "preprocessing": d["preprocessing"]}


def test_models_json_selects_di2in_as_the_coarse_stage(tmp_path):
    (tmp_path / "weights").mkdir()
    coarse = _stage("DI2IN", DI2IN_KW, (0, 1), (3.0, 3.0, 3.0), 1)
    fine = _stage("HanResUNet2p5D", HAN_KW, (0, 1, 2), (None, None, None), 5)
    c_path, c_sha = _save(tmp_path / "weights", coarse)
    f_path, f_sha = _save(tmp_path / "weights", fine)
    catalogue = {"format_version": 1, "default": "di2in-cascade", "models": [{
        "id": "di2in-cascade", "version": "1", "title": "t", "licence": "test", "training_data": "none",
        "labels": [], "stages": {"coarse": _entry(coarse, c_path.name, c_sha), "fine": _entry(fine, f_path.name,
                                                                                               f_sha)},
        "cascade": {"min_liver_ml": 0.0}}]}
    (tmp_path / "models.json").write_text(json.dumps(catalogue))
    predictor = Predictor("di2in-cascade", device="cpu", registry=Registry([tmp_path / "models.json"]))
    assert predictor.coarse.spatial_dims == 3 and predictor.fine.spatial_dims == 2
    ct, _ = make_phantom((20, 64, 64), (1.6, 1.6, 2.5), seed=2)
    seen = {}
    real = StageModel._predict_3d

    def spy(self, grid, z, progress, *rest):
        seen["grid"] = grid.shape
        return real(self, grid, z, progress, *rest)

    StageModel._predict_3d = spy
    try:
        result = predictor.predict(ct)
    finally:
        StageModel._predict_3d = real
    # the coarse stage ran once on the whole 3 mm grid: 20 x 2.5 / 3 = 17 slices, 64 x 1.6 / 3 = 34 pixels
    assert seen["grid"] == (17, 34, 34)
    assert result.labelmap.same_grid(ct) and result.labelmap.array_zyx.dtype == np.uint8
    assert result.details["coarse_liver_ml"] >= 0.0


def test_3d_sliding_window_covers_volumes_larger_than_one_window():
    stage = _stage("DI2IN", DI2IN_KW, (0, 1), (3.0, 3.0, 3.0), 1)
    torch.manual_seed(0)
    model = StageModel.from_network(stage, build_network("DI2IN", DI2IN_KW), torch.device("cpu"))
    grid = np.random.default_rng(0).uniform(-1, 1, (90, 20, 170)).astype(np.float32)  # > 80 slices, > 160 wide
    out = model.predict(grid, np.arange(5, 85))
    assert out.foreground.shape == (80, 20, 170) and out.lesion is None
    assert np.isfinite(out.foreground.astype(np.float32)).all()
    assert float(out.foreground.min()) >= 0.0 and float(out.foreground.max()) <= 1.0


def test_mixed_unet_checkpoint_with_histogram_equalisation_runs_end_to_end(tmp_path):
    stage = _stage("MixedUNet", MIXED_KW, (0, 1, 2), (None, None, None), 1, "histeq", (-100.0, 300.0))
    path, _ = _save(tmp_path, stage)
    predictor = Predictor.from_checkpoint(path, device="cpu")
    assert predictor.model.coarse.normalization == "histeq" and predictor.fine is not None
    ct, _ = make_phantom((12, 64, 64), (1.6, 1.6, 2.5), seed=4)
    result = predictor.predict(ct)
    assert result.labelmap.same_grid(ct)
    # what the network saw: equalised slices spanning the full [-1, 1] range
    grid = stage_grid(ct.array_zyx, ct.spacing_xyz, stage)
    assert grid.min() == -1.0 and grid.max() == 1.0
    body = grid[6][ct.array_zyx[6] > -100]  # the air outside the body shares the lowest level (-1)
    assert abs(float(np.median(body))) < 0.2  # the body's intensities are spread evenly over the range


def test_histeq_checkpoint_config_differs_from_a_window_one(tmp_path):
    """A checkpoint trained with equalisation cannot be loaded as if it used the plain window."""
    import pytest

    from LiverSegLib.errors import ModelError

    stage = _stage("MixedUNet", MIXED_KW, (0, 1, 2), (None, None, None), 1, "histeq", (-100.0, 300.0))
    path, sha = _save(tmp_path, stage)
    plain = _stage("MixedUNet", MIXED_KW, (0, 1, 2), (None, None, None), 1, "window", (-100.0, 300.0))
    from dataclasses import replace

    with pytest.raises(ModelError, match="preprocessing"):
        StageModel(replace(plain, sha256=sha), path, torch.device("cpu"))
