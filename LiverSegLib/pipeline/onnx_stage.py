"""A 2D/2.5D stage run from its ONNX export by OpenVINO or ONNX Runtime instead of torch.

The export (``LiverSegLib.training.export_onnx``) is the stage network followed by its softmax, with a dynamic
batch and slice size; its file and sha256 are in the stage's ``onnx`` entry of ``models.json``, beside the torch
checkpoint it was exported from. The file is read once, its sha256 checked on the bytes that are then loaded (an
ONNX file is a protobuf of tensors and operators: nothing in it is executed as Python).

Why: on the CPU, OpenVINO at float32 makes a whole prediction 1.4-1.8x faster than eager torch with the same labels
(``benchmarks/results/runtimes.md``, nine real scans, 2 threads), and spares the process MONAI's import, which is only
needed to build the torch network. bfloat16 (CPUs with AMX / AVX512-BF16) is 1.9-2.8x torch but moves lesion labels,
so it is opt-in; ONNX Runtime was 1.0-1.2x torch.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np

from LiverSegLib.config import StageConfig
from LiverSegLib.errors import InputError, LiverSegError, ModelError
from LiverSegLib.pipeline.stage import SliceStage, StageOutput
from LiverSegLib.weights import read_verified

__all__ = ["ENGINES", "PRECISIONS", "OnnxStage", "engine_available"]

ENGINES = ("openvino", "onnxruntime")
PRECISIONS = ("fp32", "bf16")


def engine_available(engine: str) -> bool:
    """Whether ``engine``'s Python package is installed (without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec(engine) is not None
    except (ImportError, ValueError):  # a finder that refuses the name (as in Testing/import_blocker.py)
        return False


class OnnxStage(SliceStage):
    """One 2D/2.5D stage of the cascade executed by an ONNX engine on the CPU.

    Args:
        stage: the stage's configuration; ``stage.onnx`` names the export.
        onnx_path: the export's file.
        engine: ``"openvino"`` or ``"onnxruntime"``.
        precision: ``"fp32"``, or ``"bf16"`` (OpenVINO only: bfloat16 inference where the CPU has it natively,
            float32 where it does not; the engine's choice is in :attr:`precision`).
        threads: CPU threads (``None``: the engine's own choice).
    """

    def __init__(self, stage: StageConfig, onnx_path: Path, engine: str = "openvino", precision: str = "fp32",
                 threads: int | None = None) -> None:
        export = stage.onnx
        if export is None:
            raise ModelError(f"the {stage.network.name} stage has no ONNX export in its catalogue entry")
        if engine not in ENGINES:
            raise InputError(f"unknown ONNX engine {engine!r}; use one of {', '.join(ENGINES)}")
        if precision not in PRECISIONS:
            raise InputError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
        if precision == "bf16" and engine != "openvino":
            raise InputError("bf16 inference is available with the openvino runtime only")
        if not engine_available(engine):
            raise InputError(f"the {engine} runtime is not installed (pip install {engine}), or use --runtime torch")
        data = read_verified(onnx_path, export.sha256)
        self.stage = stage
        self.export = export
        self.engine = engine
        self.device = "cpu"
        self.size_multiple = export.size_multiple
        self.lesion_channel = stage.classes.index(2) if 2 in stage.classes else None
        self.warnings: list[str] = []
        self._batch_override: int | None = None
        if engine == "openvino":
            self._run, self.precision = _openvino_session(data, precision, threads, onnx_path)
        else:
            self._run, self.precision = _onnxruntime_session(data, threads, onnx_path), "fp32"

    @property
    def runtime(self) -> str:
        """What runs this stage, e.g. ``"openvino bf16"``."""
        return f"{self.engine} {self.precision}"

    @property
    def batch_size(self) -> int:
        return self._batch_override or max(1, self.stage.batch_cpu)

    def predict(self, normalized_zyx: np.ndarray, z_indices: np.ndarray,
                progress: Callable[[float], None] | None = None, keep_members: bool = False) -> StageOutput:
        """Probabilities of the slices ``z_indices`` of a normalised volume on this stage's grid (see
        :meth:`~LiverSegLib.pipeline.stage.StageModel.predict`)."""
        return self._predict_slices(normalized_zyx, z_indices, progress, keep_members)

    def _probabilities(self, batch: np.ndarray) -> np.ndarray:
        ny, nx = batch.shape[-2:]
        m = self.size_multiple
        pad_y, pad_x = (-ny) % m, (-nx) % m
        if pad_y or pad_x:  # air (-1) around the slice, as the torch stage pads
            batch = np.pad(batch, ((0, 0), (0, 0), (0, pad_y), (0, pad_x)), constant_values=-1.0)
        return self._run(np.ascontiguousarray(batch, dtype=np.float32))[:, :, :ny, :nx]

    def _is_out_of_memory(self, exc: BaseException) -> bool:
        text = str(exc).lower()
        return isinstance(exc, MemoryError) or "alloc" in text or "out of memory" in text

    def _shrink_after_out_of_memory(self) -> None:
        if self.batch_size <= 1:
            raise LiverSegError("not enough memory to run the network even one slice at a time; close other "
                                "programs or use --quick") from None
        self._batch_override = max(1, self.batch_size // 2)
        self.warnings = [w for w in self.warnings if "batch reduced" not in w]
        self.warnings.append(f"out of memory on cpu: {self.stage.network.name} batch reduced to "
                             f"{self._batch_override}")


def _openvino_session(data: bytes, precision: str, threads: int | None,
                      path: Path) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    import openvino as ov

    core = ov.Core()
    try:
        model = core.read_model(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - the engine raises its own types for an unreadable file
        raise ModelError(f"model file {path.name} is not a readable ONNX model ({_first_line(exc)})") from None
    config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY",
                                 "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = core.compile_model(model, "CPU", config)
    # bf16 is a hint: a CPU without native bfloat16 runs float32, and says so here
    used = str(compiled.get_property("INFERENCE_PRECISION_HINT")).lower()
    request = compiled.create_infer_request()

    def run(batch: np.ndarray) -> np.ndarray:
        request.infer({0: batch})
        return request.get_output_tensor(0).data  # a view of the request's buffer: copied out before the next call

    return run, "bf16" if "bf16" in used or "bfloat16" in used else "fp32"


def _onnxruntime_session(data: bytes, threads: int | None, path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"model file {path.name} is not a readable ONNX model ({_first_line(exc)})") from None
    name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {name: batch})[0]

    return run


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]
