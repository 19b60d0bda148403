"""Safe checkpoint files: round trip, atomic writes, and every kind of file that must be refused.

Each refusal is checked through its message, and the pickle refusal also through its effect: the crafted file
would run code when unpickled, and the test proves that code never ran.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import LiverSegLib.weights as weights_mod
from LiverSegLib.config import NetworkSpec, StageConfig
from LiverSegLib.errors import InputError, ModelError
from LiverSegLib.networks import HanResUNet2p5D
from LiverSegLib.pipeline.checkpoint_model import model_from_checkpoint
from LiverSegLib.pipeline.predictor import Predictor
from LiverSegLib.pipeline.stage import StageModel, stage_config_dict
from LiverSegLib.weights import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint, sha256_file, verify_sha256

CPU = torch.device("cpu")
KWARGS = {"in_channels": 5, "out_channels": 3, "features": [4, 8]}


def _stage(sha256: str = "0" * 64, kwargs: dict | None = None, classes=(0, 1, 2), weights: str = "w.pt",
           name: str = "HanResUNet2p5D") -> StageConfig:
    return StageConfig(network=NetworkSpec(name, dict(kwargs or KWARGS)), weights=weights, sha256=sha256,
                       classes=tuple(classes), hu_window=(-100.0, 200.0), context_slices=5, batch_cpu=4)


def _net(kwargs: dict | None = None) -> HanResUNet2p5D:
    torch.manual_seed(0)
    return HanResUNet2p5D(**(kwargs or KWARGS))


def _write(path: Path, stage: StageConfig | None = None, net: torch.nn.Module | None = None, **kw) -> str:
    stage = stage or _stage()
    net = net or _net()
    return save_checkpoint(path, stage_config_dict(stage), net.state_dict(), **kw)


class _RunsCode:
    """Unpickling this object calls ``exec`` on a string that writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


# --- save / load round trip -------------------------------------------------------------------------------------
def test_round_trip_half_on_disk_float32_back_ints_kept(tmp_path):
    net = _net()
    sd = net.state_dict()
    path = tmp_path / "sub" / "model.pt"  # the parent folder is created
    digest = save_checkpoint(path, stage_config_dict(_stage()), sd, metadata={"steps": 3})
    assert digest == sha256_file(path)
    assert len(digest) == 64

    on_disk = torch.load(path, map_location="cpu", weights_only=True)
    float_keys = [k for k, v in sd.items() if torch.is_floating_point(v)]
    int_keys = [k for k, v in sd.items() if not torch.is_floating_point(v)]
    assert float_keys and int_keys  # batch norm's num_batches_tracked is an int64 buffer
    assert all(on_disk["state_dict"][k].dtype == torch.float16 for k in float_keys)
    assert on_disk["format"] == CHECKPOINT_FORMAT and on_disk["format_version"] == 1

    ckpt = load_checkpoint(path, digest)
    assert ckpt["config"] == stage_config_dict(_stage())
    assert ckpt["metadata"] == {"steps": 3}
    assert set(ckpt["state_dict"]) == set(sd)
    for k in float_keys:
        assert ckpt["state_dict"][k].dtype == torch.float32
        torch.testing.assert_close(ckpt["state_dict"][k], sd[k].half().float(), rtol=0, atol=0)
        torch.testing.assert_close(ckpt["state_dict"][k], sd[k], rtol=1e-3, atol=1e-3)
    for k in int_keys:
        assert ckpt["state_dict"][k].dtype == sd[k].dtype
        assert torch.equal(ckpt["state_dict"][k], sd[k])


def test_save_full_precision_when_asked(tmp_path):
    sd = {"w": torch.tensor([1.0 + 2**-20]), "n": torch.tensor(7)}
    digest = save_checkpoint(tmp_path / "f.pt", {"x": 1}, sd, half=False)
    ckpt = load_checkpoint(tmp_path / "f.pt", digest)
    assert ckpt["state_dict"]["w"].item() == 1.0 + 2**-20  # not rounded to float16
    assert ckpt["state_dict"]["n"].dtype == torch.int64 and ckpt["state_dict"]["n"].item() == 7
    assert ckpt["metadata"] == {}


def test_save_is_atomic_and_leaves_no_temp_file(tmp_path):
    _write(tmp_path / "model.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_saved_file_is_readable_by_others(tmp_path):
    _write(tmp_path / "model.pt")
    assert os.stat(tmp_path / "model.pt").st_mode & 0o777 == 0o644


def test_failing_save_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    old_digest = _write(path)
    real_save = torch.save

    def save_then_fail(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as fh:  # half-written file, then the disk fills up
            fh.truncate(100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", save_then_fail)
    with pytest.raises(OSError, match="No space left"):
        _write(path, net=_net({"in_channels": 5, "out_channels": 2, "features": [4, 8]}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no temp file left behind
    assert sha256_file(path) == old_digest  # the previous file is untouched

    new_path = tmp_path / "new.pt"
    with pytest.raises(OSError):
        _write(new_path)
    assert not new_path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


# --- refusals ---------------------------------------------------------------------------------------------------
def test_checkpoint_that_would_run_code_is_refused_and_the_code_never_runs(tmp_path):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pt"
    payload = {"format": CHECKPOINT_FORMAT, "format_version": 1, "config": {}, "state_dict": {},
               "metadata": {"x": _RunsCode(marker)}}
    torch.save(payload, path)  # torch.save pickles anything
    with pytest.raises(ModelError, match="needs pickle") as info:
        load_checkpoint(path)
    assert "evil.pt" in str(info.value) and "refused" in str(info.value)
    assert not marker.exists()
    # the same refusal when the hash matches (a catalogue that lists a malicious file)
    with pytest.raises(ModelError, match="needs pickle"):
        load_checkpoint(path, sha256_file(path))
    assert not marker.exists()

    # Control: the file really runs code when unpickled without weights_only, so the refusal above matters.
    torch.load(path, map_location="cpu", weights_only=False)
    assert marker.read_text() == "ran"


def test_legacy_format_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "legacy.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "x": _RunsCode(marker)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(ModelError, match="needs pickle"):
        load_checkpoint(path)
    assert not marker.exists()


def test_truncated_checkpoint_is_refused(tmp_path):
    full = tmp_path / "full.pt"
    _write(full)
    data = full.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"cut\.pt is truncated or not a torch checkpoint"):
        load_checkpoint(cut)


@pytest.mark.parametrize(("content", "expected"), [
    (b"", "is empty"),
    (b"hello, this is a text file and not a checkpoint", "not a torch checkpoint"),
    (b"\x89PNG\r\n\x1a\n" + bytes(64), "not a torch checkpoint"),
    (b"\x80\x02" + bytes(range(256)) * 4, "is corrupt or holds more than tensors"),
])
def test_files_that_are_not_checkpoints_are_refused_as_such(tmp_path, content, expected):
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=expected) as info:
        load_checkpoint(path)
    assert "junk.pt" in str(info.value)
    assert "could run code" not in str(info.value)  # not misreported as a malicious file


def test_wrong_sha256_is_refused_before_torch_load(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    digest = _write(path)
    wrong = ("f" if digest[0] != "f" else "e") + digest[1:]

    def must_not_load(*args, **kwargs):
        raise AssertionError("torch.load was called on a file whose checksum does not match")

    monkeypatch.setattr(torch, "load", must_not_load)
    monkeypatch.setattr(weights_mod.torch, "load", must_not_load)
    with pytest.raises(ModelError, match="fails its checksum") as info:
        load_checkpoint(path, wrong)
    msg = str(info.value)
    assert "model.pt" in msg and wrong[:12] in msg and digest[:12] in msg and "reinstall" in msg
    verify_sha256(path, digest.upper())  # case-insensitive comparison


def test_modified_file_fails_its_checksum(tmp_path):
    path = tmp_path / "model.pt"
    digest = _write(path)
    with open(path, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelError, match="fails its checksum"):
        load_checkpoint(path, digest)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(ModelError, match="model file not found"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(ModelError, match="model file not found.*liverseg models verify"):
        load_checkpoint(tmp_path / "nope.pt", "0" * 64)


def test_plain_state_dict_is_not_a_liverseg_checkpoint(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(_net().state_dict(), path)
    with pytest.raises(ModelError, match=r"plain\.pt is not a LiverSeg checkpoint \(no 'format'"):
        load_checkpoint(path)


@pytest.mark.parametrize(("payload", "expected"), [
    ({"format": CHECKPOINT_FORMAT, "config": {}}, "lacks its 'config' or 'state_dict'"),
    ({"format": CHECKPOINT_FORMAT, "config": [], "state_dict": {}}, "lacks its 'config' or 'state_dict'"),
    ({"format": CHECKPOINT_FORMAT, "config": {}, "state_dict": {"a": 3}}, "not named tensors: a"),
    ({"format": CHECKPOINT_FORMAT, "config": {}, "state_dict": {}, "metadata": [1]}, "'metadata' entry"),
    ([torch.zeros(2)], "not a LiverSeg checkpoint"),
])
def test_malformed_checkpoint_dicts_are_refused(tmp_path, payload, expected):
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    with pytest.raises(ModelError, match=expected):
        load_checkpoint(path)


def test_model_error_is_an_input_error():
    assert issubclass(ModelError, InputError)  # the CLI maps it to exit code 2


# --- checkpoints against their network and the model config -----------------------------------------------------
def test_stage_model_loads_a_fitting_checkpoint_and_predicts(tmp_path):
    path = tmp_path / "w.pt"
    net = _net()
    digest = _write(path, net=net)
    stage = _stage(digest)
    model = StageModel(stage, path, CPU)
    for k, v in net.state_dict().items():
        if torch.is_floating_point(v):
            torch.testing.assert_close(model.net.state_dict()[k], v.half().float(), rtol=0, atol=0)
    out = model.predict(np.zeros((3, 6, 6), np.float32), np.arange(3))
    assert out.foreground.shape == (3, 6, 6) and out.lesion is not None


def test_stage_model_refuses_a_wrong_checksum(tmp_path):
    path = tmp_path / "w.pt"
    _write(path)
    with pytest.raises(ModelError, match="fails its checksum"):
        StageModel(_stage("a" * 64), path, CPU)


def test_unknown_network_class_is_named(tmp_path):
    stage = _stage(name="NoSuchNet3000")
    path = tmp_path / "w.pt"
    digest = _write(path, stage=stage)
    with pytest.raises(ModelError, match="unknown network class 'NoSuchNet3000'.*known: .*HanResUNet2p5D"):
        StageModel(_stage(digest, name="NoSuchNet3000"), path, CPU)
    # a checkpoint named directly by the user: its config is the only description
    model = model_from_checkpoint(path)
    assert model.coarse.network.name == "NoSuchNet3000"
    with pytest.raises(ModelError, match="unknown network class 'NoSuchNet3000'"):
        StageModel(model.coarse, Path(model.coarse.weights), CPU)
    with pytest.raises(ModelError, match="unknown network class 'NoSuchNet3000'"):
        Predictor.from_checkpoint(path, device="cpu")


def test_network_refusing_its_arguments(tmp_path):
    stage = _stage(kwargs={"in_channels": 5, "out_channels": 3, "features": [4]})
    path = tmp_path / "w.pt"
    digest = _write(path, stage=stage)
    with pytest.raises(ModelError, match="network HanResUNet2p5D refused its arguments"):
        StageModel(_stage(digest, kwargs=stage.network.kwargs), path, CPU)


def test_state_dict_that_does_not_fit_its_network(tmp_path):
    big = {"in_channels": 5, "out_channels": 3, "features": [4, 16]}
    path = tmp_path / "w.pt"
    # the config claims features [4, 16] but the weights come from a [4, 8] network
    digest = _write(path, stage=_stage(kwargs=big), net=_net())
    with pytest.raises(ModelError, match=r"w\.pt does not fit its network"):
        StageModel(_stage(digest, kwargs=big), path, CPU)
    with pytest.raises(ModelError, match="does not fit its network"):
        Predictor.from_checkpoint(path, device="cpu")


def test_state_dict_with_missing_keys_does_not_fit(tmp_path):
    sd = dict(_net().state_dict())
    sd.pop(next(iter(sd)))
    path = tmp_path / "w.pt"
    digest = save_checkpoint(path, stage_config_dict(_stage()), sd)
    with pytest.raises(ModelError, match="does not fit its network"):
        StageModel(_stage(digest), path, CPU)


@pytest.mark.parametrize("model_stage", [
    _stage(kwargs={"in_channels": 5, "out_channels": 3, "features": [4, 16]}),  # other widths
    _stage(classes=(0, 2, 1)),  # same network, channels mean other labels
    _stage(kwargs={"in_channels": 5, "out_channels": 2, "features": [4, 8]}, classes=(0, 1)),
    replace(_stage(), hu_window=(-160.0, 240.0)),  # trained with another HU window
])
def test_checkpoint_config_differing_from_the_model_config(tmp_path, model_stage):
    path = tmp_path / "w.pt"
    digest = _write(path)  # describes features [4, 8], classes [0, 1, 2]
    stage = replace(model_stage, sha256=digest)
    expected = r"checkpoint w\.pt was made for (network|classes|preprocessing) .* but the model config gives"
    with pytest.raises(ModelError, match=expected):
        StageModel(stage, path, CPU)


def test_model_from_checkpoint_describes_itself(tmp_path):
    path = tmp_path / "liver_only.pt"
    kwargs = {"in_channels": 5, "out_channels": 2, "features": [4, 8]}
    stage = _stage(kwargs=kwargs, classes=(0, 1))
    digest = _write(path, stage=stage, net=_net(kwargs), metadata={"id": "my-model", "version": "3"})
    model = model_from_checkpoint(path)
    assert (model.id, model.version) == ("my-model", "3")
    assert model.coarse.sha256 == digest and model.fine is None
    assert model.coarse.network.kwargs == kwargs and model.coarse.hu_window == (-100.0, 200.0)
    predictor = Predictor.from_checkpoint(path, device="cpu")
    assert predictor.fine is None and predictor.coarse.lesion_channel is None


def test_model_from_checkpoint_with_an_incomplete_config(tmp_path):
    path = tmp_path / "w.pt"
    save_checkpoint(path, {"network": {"name": "HanResUNet2p5D"}}, _net().state_dict())
    with pytest.raises(ModelError, match=r"w\.pt has an incomplete config"):
        model_from_checkpoint(path)
    with pytest.raises(ModelError, match="model file not found"):
        model_from_checkpoint(tmp_path / "missing.pt")
