"""Out-of-memory during inference: smaller slice batches, then the CPU, never a run that ends with nothing.

No GPU exists here, so the failures are injected on purpose: a network wrapper raises ``torch.OutOfMemoryError``
as CUDA would, and the "GPU" is PyTorch's ``meta`` device (tensors without storage), which the fallback leaves.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from LiverSegLib.config import NetworkSpec, StageConfig
from LiverSegLib.errors import LiverSegError
from LiverSegLib.networks import build_network
from LiverSegLib.pipeline.stage import StageModel

KW = {"in_channels": 5, "out_channels": 3, "features": [4, 8, 16]}
STAGE = StageConfig(NetworkSpec("HanResUNet2p5D", KW), "x.pt", "0" * 64, (0, 1, 2), (-160.0, 240.0),
                    batch_cpu=16, batch_cuda=16)


class _Flaky(nn.Module):
    """Raises out-of-memory for batches above ``limit`` (or always while on a device other than the CPU)."""

    def __init__(self, net: nn.Module, limit: int, gpu_only: bool = False) -> None:
        super().__init__()
        self.net, self.limit, self.gpu_only = net, limit, gpu_only
        self.in_channels, self.size_multiple = net.in_channels, net.size_multiple
        self.batches: list[int] = []

    def forward(self, x):
        self.batches.append(len(x))
        if (self.gpu_only and x.device.type != "cpu") or len(x) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.net(x)


def _grid():
    return np.random.default_rng(0).uniform(-1, 1, (20, 32, 32)).astype(np.float32)


def _reference():
    torch.manual_seed(0)
    return StageModel.from_network(STAGE, build_network("HanResUNet2p5D", KW), torch.device("cpu")).predict(
        _grid(), np.arange(20))


def test_out_of_memory_halves_the_batch_and_gives_the_same_result():
    torch.manual_seed(0)
    flaky = _Flaky(build_network("HanResUNet2p5D", KW), limit=3)
    model = StageModel.from_network(STAGE, flaky, torch.device("cpu"))
    out = model.predict(_grid(), np.arange(20))
    ref = _reference()
    assert np.array_equal(out.foreground, ref.foreground) and np.array_equal(out.lesion, ref.lesion)
    assert flaky.batches[:4] == [16, 8, 4, 2] and set(flaky.batches[4:]) == {2}  # 16 -> 8 -> 4 -> 2, then kept
    assert model.batch_size == 2 and model.warnings == ["out of memory on cpu: HanResUNet2p5D batch reduced to 2"]


def test_gpu_out_of_memory_at_one_slice_falls_back_to_the_cpu():
    torch.manual_seed(0)
    flaky = _Flaky(build_network("HanResUNet2p5D", KW), limit=100, gpu_only=True)
    model = StageModel.from_network(STAGE, flaky, torch.device("cpu"))
    model.device = torch.device("meta")  # stands in for a GPU whose memory is exhausted (batches go there)
    out = model.predict(_grid(), np.arange(20))
    assert model.device.type == "cpu" and any("ran on the CPU" in w for w in model.warnings)
    assert flaky.batches == [16, 8, 4, 2, 1, 16, 4]  # halved down to one slice on the "GPU", then CPU batches
    ref = _reference()
    assert np.array_equal(out.foreground, ref.foreground)


def test_cpu_out_of_memory_at_one_slice_is_a_clear_error():
    flaky = _Flaky(build_network("HanResUNet2p5D", KW), limit=0)
    model = StageModel.from_network(STAGE, flaky, torch.device("cpu"))
    with pytest.raises(LiverSegError, match="not enough memory"):
        model.predict(_grid(), np.arange(4))


def test_other_runtime_errors_are_not_mistaken_for_memory():
    class Broken(_Flaky):
        def forward(self, x):
            raise RuntimeError("shape mismatch")

    model = StageModel.from_network(STAGE, Broken(build_network("HanResUNet2p5D", KW), 1), torch.device("cpu"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        model.predict(_grid(), np.arange(4))
    assert model.warnings == []


def test_the_result_reports_the_fallback(tmp_path):
    from cli_fixtures import SHAPE, SPACING, make_tiny_checkpoint

    from LiverSegLib.data.phantoms import make_phantom
    from LiverSegLib.pipeline.predictor import Predictor

    predictor = Predictor.from_checkpoint(make_tiny_checkpoint(tmp_path), device="cpu")
    ct, _ = make_phantom(SHAPE, SPACING, seed=3)
    before = predictor.predict(ct)
    predictor.fine.net = _Flaky(predictor.fine.net, limit=2)
    after = predictor.predict(ct)
    assert np.array_equal(before.labelmap.array_zyx, after.labelmap.array_zyx)
    assert not any("out of memory" in w for w in before.warnings)
    assert any("batch reduced to 2" in w for w in after.warnings) and after.details["device"] == "cpu"
