"""The ONNX runtimes (issue 11): the shipped exports against torch on a real CT, their checks, their failures.

OpenVINO is a dependency (the default CPU runtime); ONNX Runtime and the ``onnx`` package (export) come with the
dev extra. Every comparison is against eager torch float32 on the real TotalSegmentator DICOM example.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from LiverSegLib.config import OnnxExport
from LiverSegLib.data.samples import load_case
from LiverSegLib.errors import InputError, ModelError
from LiverSegLib.pipeline.onnx_stage import OnnxStage, engine_available
from LiverSegLib.pipeline.predictor import Predictor
from LiverSegLib.pipeline.stage import StageModel, stage_grid
from LiverSegLib.registry import load_registry

ROOT = Path(__file__).resolve().parents[1]
def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


needs_ort = pytest.mark.skipif(not engine_available("onnxruntime"), reason="onnxruntime not installed (dev extra)")


@pytest.fixture(scope="module")
def ct():
    return load_case("ts_example_dicom")[0]


@pytest.fixture(scope="module")
def model():
    return load_registry().get("han-liver")


@pytest.fixture(scope="module")
def torch_labels(ct):
    return Predictor("han-liver", device="cpu", runtime="torch").predict(ct).labelmap.array_zyx


def test_every_2d_stage_of_the_catalogue_ships_a_verified_export():
    registry = load_registry()
    for model_id in registry.ids():
        model = registry.get(model_id)
        for stage in (model.coarse, model.fine):
            if stage is None or stage.network.name == "DI2IN":
                continue
            assert stage.onnx is not None, f"{model_id} {stage.weights} has no ONNX export"
            path = model.weight_path(stage.onnx.file)
            assert path.is_file() and path.stat().st_size < 5_000_000  # float16-stored, like the checkpoint
            assert stage.onnx.size_multiple == 2 ** (len(stage.network.kwargs["features"]) - 1)


@pytest.mark.parametrize("engine", ["openvino", pytest.param("onnxruntime", marks=needs_ort)])
def test_stage_probabilities_match_torch_on_real_ct(ct, model, engine):
    """The fine stage on real slices (not a multiple of 16 wide: the padding path), fp32 engine vs eager torch."""
    stage = model.fine
    grid = stage_grid(ct.array_zyx[6:14, 100:389, 60:455], ct.spacing_xyz, stage, (None, None, None))
    z = np.arange(grid.shape[0])
    reference = StageModel(stage, model.weight_path(stage.weights), torch.device("cpu")).predict(grid, z)
    onnx = OnnxStage(stage, model.weight_path(stage.onnx.file), engine, "fp32", threads=2)
    out = onnx.predict(grid, z)
    assert out.foreground.shape == reference.foreground.shape == grid.shape
    # the export folds batch norm into the convolutions and stores float16: differences stay at rounding level
    assert np.abs(out.foreground.astype(np.float32) - reference.foreground).max() < 0.02
    assert np.abs(out.lesion.astype(np.float32) - reference.lesion).max() < 0.02
    assert np.mean((out.foreground >= 0.5) == (reference.foreground >= 0.5)) > 0.9999


def test_openvino_labels_equal_torch_labels(ct, torch_labels):
    predictor = Predictor("han-liver", device="cpu", runtime="openvino", precision="fp32", threads=2)
    assert predictor.runtimes == {"coarse": "openvino fp32", "fine": "openvino fp32"}
    result = predictor.predict(ct)
    assert result.details["runtime"] == predictor.runtimes
    labels = result.labelmap.array_zyx
    assert dice(labels > 0, torch_labels > 0) > 0.999
    assert result.labelmap.same_grid(ct)


def test_auto_is_openvino_float32_and_bf16_is_asked_for(ct, torch_labels):
    """The default is OpenVINO at float32 (bfloat16 moved lesion labels by more than Dice 0.005 on real scans:
    benchmarks/results/runtimes.md); bfloat16 runs where asked, natively where the CPU can (else float32)."""
    predictor = Predictor("han-liver", device="cpu", threads=2)
    assert predictor.runtimes == {"coarse": "openvino fp32", "fine": "openvino fp32"}
    fast = Predictor("han-liver", device="cpu", precision="bf16", threads=2)
    assert set(fast.runtimes.values()) <= {"openvino bf16", "openvino fp32"}
    labels = fast.predict(ct).labelmap.array_zyx
    assert dice(labels > 0, torch_labels > 0) >= 0.99  # liver only on this case; measured 0.9998


def test_a_changed_export_is_refused_in_one_line(tmp_path, model):
    stage = model.coarse
    bad = tmp_path / "coarse.onnx"
    data = bytearray(model.weight_path(stage.onnx.file).read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"coarse.onnx fails its checksum .* reinstall it"):
        OnnxStage(stage, bad, "openvino")
    with pytest.raises(ModelError, match="model file not found"):
        OnnxStage(stage, tmp_path / "missing.onnx", "openvino")
    # a file with the right checksum but no ONNX inside (a catalogue pointing at the wrong file)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    from LiverSegLib.weights import sha256_file

    stage_junk = replace(stage, onnx=OnnxExport("junk.onnx", sha256_file(junk), 16))
    with pytest.raises(ModelError, match="junk.onnx is not a readable ONNX model"):
        OnnxStage(stage_junk, junk, "openvino")


def test_runtime_choices_fail_clearly(model):
    with pytest.raises(InputError, match="runtime must be one of auto, torch, openvino, onnxruntime"):
        Predictor("han-liver", device="cpu", runtime="tensorrt")
    with pytest.raises(InputError, match="bf16 inference needs an ONNX runtime"):
        Predictor("han-liver", device="cpu", runtime="torch", precision="bf16")
    with pytest.raises(InputError, match="bf16 inference is available with the openvino runtime only"):
        OnnxStage(model.coarse, model.weight_path(model.coarse.onnx.file), "onnxruntime", "bf16")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            Predictor("han-liver", device="cuda", runtime="openvino")


def test_a_model_without_export_runs_on_torch():
    """A stage without an ``onnx`` block (a user's checkpoint, DI2IN's 3D coarse stage) keeps torch under auto."""
    predictor = Predictor("di2in-an-liver", device="cpu", threads=2)
    assert predictor.runtimes["coarse"] == "torch fp32 on cpu"
    assert predictor.runtimes["fine"].startswith("openvino")


def test_monai_stays_off_the_openvino_inference_path(tmp_path):
    """A whole CLI run on the real DICOM example imports neither MONAI nor the torch networks."""
    code = (
        "import sys, runpy\n"
        "sys.argv = ['liverseg', 'segment', sys.argv[1], '-o', sys.argv[2], '--progress', 'none', '--device', 'cpu',"
        " '--no-overview', '--quick']\n"
        "try:\n"
        "    runpy.run_module('LiverSegLib', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        "loaded = sorted(m for m in sys.modules if m == 'monai' or m.startswith('LiverSegLib.networks'))\n"
        "print('LOADED', loaded)\n"
    )
    from LiverSegLib.data.samples import fetch_source

    folder = fetch_source("totalsegmentator") / "tests/reference_files/example_ct_dicom"
    proc = subprocess.run([sys.executable, "-c", code, str(folder), str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "LOADED []" in proc.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["details"]["runtime"]["coarse"].startswith("openvino")


@pytest.mark.skipif(not engine_available("onnx"), reason="the onnx package (dev extra) exports models")
def test_export_of_a_trained_checkpoint_matches_torch(tmp_path):
    """export_stage on a checkpoint written here: the export's probabilities are torch's."""
    from cli_fixtures import make_tiny_checkpoint

    from LiverSegLib.pipeline.checkpoint_model import model_from_checkpoint
    from LiverSegLib.training.export_onnx import export_stage

    ckpt = make_tiny_checkpoint(tmp_path)
    stage = model_from_checkpoint(ckpt).coarse
    export = export_stage(stage, ckpt, tmp_path / "tiny.onnx")
    assert export.file == "tiny.onnx" and export.size_multiple == 4
    import onnx

    props = {p.key: p.value for p in onnx.load(str(tmp_path / "tiny.onnx")).metadata_props}
    assert props["liverseg.source_sha256"] == stage.sha256
    stage = replace(stage, onnx=export)
    rng = np.random.default_rng(0)
    grid = rng.uniform(-1, 1, (9, 37, 42)).astype(np.float32)
    z = np.arange(9)
    reference = StageModel(stage, ckpt, torch.device("cpu")).predict(grid, z)
    out = OnnxStage(stage, tmp_path / "tiny.onnx", "openvino", "fp32").predict(grid, z)
    assert np.abs(out.foreground.astype(np.float32) - reference.foreground).max() < 0.01
    assert np.abs(out.lesion.astype(np.float32) - reference.lesion).max() < 0.01


def test_models_verify_checks_the_exports(tmp_path, model):
    """``models verify`` hashes the ONNX files too; a changed one fails it, naming the file."""
    home = tmp_path / "home"
    (home / "weights").mkdir(parents=True)
    for stage in (model.coarse, model.fine):
        for name in (stage.weights, stage.onnx.file):
            shutil.copy(model.weight_path(name), home / "weights" / name)
    entry = dict(load_registry().raw("han-liver"), id="han-liver-copy")
    (home / "models.json").write_text(json.dumps({"format_version": 1, "default": "han-liver-copy",
                                                  "models": [entry]}))
    onnx_file = home / "weights" / model.fine.onnx.file
    onnx_file.write_bytes(onnx_file.read_bytes()[:-10])
    env = {"LIVERSEG_HOME": str(home), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "LiverSegLib", "models", "verify", "han-liver-copy"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "FAILED  han-liver-copy fine onnx: model file han_liver_fine.onnx fails its checksum" in proc.stdout
    assert "ok      han-liver-copy coarse onnx: han_liver_coarse.onnx" in proc.stdout
    assert "ok      han-liver-copy fine: han_liver_fine.pt" in proc.stdout
