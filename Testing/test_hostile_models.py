"""Hostile model files through every door: ``load_checkpoint``, ``liverseg segment --model-file``, ``liverseg
segment --model ID`` (a user catalogue that lists the file) and ``liverseg models import``.

Each is refused with exit code 2 and one stderr line naming the file; a checkpoint that would run code when
unpickled never runs it (a marker file it would write never appears); nothing is written (no output folder, no
catalogue entry, no weight file). test_weights.py covers the refusals of ``load_checkpoint`` itself; this file adds
the command line, several truncation points, a catalogue whose checksum no longer matches, unknown network classes
and non-tensor junk in ``state_dict``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_fixtures import REPO, assert_one_line_error, cli_env, run_cli, write_nifti_ct

from LiverSegLib.cli.main import main
from LiverSegLib.config import NetworkSpec, StageConfig
from LiverSegLib.errors import ModelError
from LiverSegLib.model_import import import_checkpoint
from LiverSegLib.networks import HanResUNet2p5D
from LiverSegLib.pipeline.stage import stage_config_dict
from LiverSegLib.weights import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint, sha256_file

KWARGS = {"in_channels": 5, "out_channels": 3, "features": [4, 8, 16]}


def _config(name: str = "HanResUNet2p5D") -> dict:
    stage = StageConfig(network=NetworkSpec(name, dict(KWARGS)), weights="w.pt", sha256="0" * 64, classes=(0, 1, 2),
                        hu_window=(-160.0, 240.0), context_slices=5, batch_cpu=4)
    return stage_config_dict(stage)


def _state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return HanResUNet2p5D(**KWARGS).state_dict()


def _good(path: Path, seed: int = 0) -> Path:
    save_checkpoint(path, _config(), _state_dict(seed), metadata={"version": str(seed)})
    return path


class _Exec:
    """Unpickling this calls ``exec`` on code that writes the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


class _System:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _evil(path: Path, marker: Path, payload: type = _Exec, legacy: bool = False) -> Path:
    """A checkpoint that looks like a LiverSeg one (real weights, real config) but runs code when unpickled."""
    ckpt = {"format": CHECKPOINT_FORMAT, "format_version": 1, "config": _config(), "state_dict": _state_dict(),
            "metadata": {"version": "1", "note": payload(marker)}}
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.fixture(scope="module")
def ct(tmp_path_factory) -> Path:
    """A valid CT, so that ``segment`` gets as far as loading the model."""
    return write_nifti_ct(tmp_path_factory.mktemp("ct"))[0]


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def env(home) -> dict[str, str]:
    return cli_env(home)


def _segment(ct: Path, out: Path, *model: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run_cli(ct, "-o", out, *model, "--device", "cpu", "--progress", "none", env=env)


def _models_import(path: Path, model_id: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "LiverSegLib", "models", "import", str(path), "--id", model_id],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env=env)


def _cli_in_process(args: list, home: Path, capsys, monkeypatch) -> str:
    """``liverseg ARGS`` through the CLI's entry point in this process (a subprocess costs seconds of imports):
    exit code 2 and one stderr line, which is returned."""
    monkeypatch.setenv("LIVERSEG_HOME", str(home))
    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    assert code == 2, (code, captured)
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("liverseg: error: "), captured.err
    return lines[0]


def _import_in_process(path: Path, model_id: str, home: Path, capsys, monkeypatch) -> str:
    line = _cli_in_process(["models", "import", path, "--id", model_id], home, capsys, monkeypatch)
    assert not (home / "models.json").exists() and not _weight_files(home)  # nothing was written
    return line


def _segment_in_process(ct: Path, out: Path, model_file: Path, home: Path, capsys, monkeypatch) -> str:
    line = _cli_in_process(["segment", ct, "-o", out, "--model-file", model_file, "--device", "cpu", "--progress",
                            "none"], home, capsys, monkeypatch)
    assert not out.exists()
    return line


def _weight_files(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "weights").iterdir()) if (home / "weights").is_dir() else []


# ------------------------------------------------------------------------- a checkpoint that would run code


@pytest.mark.slow
def test_code_running_checkpoint_is_refused_by_every_command_and_never_runs(tmp_path, ct, home, env):
    marker = tmp_path / "MARKER"
    evil = _evil(tmp_path / "evil.pt", marker)

    with pytest.raises(ModelError, match="needs pickle") as info:
        load_checkpoint(evil)
    assert "evil.pt" in str(info.value) and "\n" not in str(info.value)

    proc = _segment(ct, tmp_path / "out", "--model-file", evil, env=env)
    assert_one_line_error(proc, "evil.pt", "needs pickle", "refused")
    assert not (tmp_path / "out").exists()

    proc = _models_import(evil, "evil", env)
    assert_one_line_error(proc, "evil.pt", "needs pickle")
    assert not (home / "models.json").exists() and not _weight_files(home)

    # a catalogue that vouches for the file (its sha256 matches) does not make it loadable
    (home / "weights").mkdir(parents=True, exist_ok=True)
    (home / "weights" / "evil.pt").write_bytes(evil.read_bytes())
    entry = {"id": "evil", "version": "1", "title": "evil", "licence": "x", "training_data": "x", "labels": [],
             "stages": {"coarse": {**_config(), "weights": "evil.pt", "sha256": sha256_file(evil)}}, "cascade": {}}
    (home / "models.json").write_text(json.dumps({"format_version": 1, "default": "evil", "models": [entry]}))
    proc = _segment(ct, tmp_path / "out", "--model", "evil", env=env)
    assert_one_line_error(proc, "evil.pt", "needs pickle")
    assert not (tmp_path / "out").exists()

    assert not marker.exists()  # the code never ran, through any door
    # Control: the file really runs its code when unpickled without weights_only, so the refusals above matter.
    torch.load(evil, map_location="cpu", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(("payload", "legacy"), [(_Exec, True), (_System, False), (_System, True)],
                         ids=["exec-legacy", "system-zip", "system-legacy"])
def test_other_code_running_checkpoints_are_refused_and_never_run(tmp_path, ct, home, capsys, monkeypatch, payload,
                                                                   legacy):
    if payload is _System and sys.platform == "win32":
        pytest.skip("the shell payload uses touch")
    marker = tmp_path / "MARKER"
    evil = _evil(tmp_path / "evil.pt", marker, payload, legacy)
    assert "needs pickle" in _segment_in_process(ct, tmp_path / "out", evil, home, capsys, monkeypatch)
    line = _import_in_process(evil, "evil", home, capsys, monkeypatch)
    assert "evil.pt" in line and "needs pickle" in line
    assert not marker.exists()
    torch.load(evil, map_location="cpu", weights_only=False)  # control: the payload works
    assert marker.exists()


# ---------------------------------------------------------------------------------------- truncated files


def _cut_points(size: int) -> list[int]:
    return sorted({0, 1, 3, 4, 10, 64, 512, size // 4, size // 2, 3 * size // 4, size - 100, size - 22, size - 1})


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_checkpoint_cut_anywhere_is_refused_in_one_line(tmp_path, legacy):
    full = tmp_path / "full.pt"
    ckpt = {"format": CHECKPOINT_FORMAT, "format_version": 1, "config": _config(), "state_dict": _state_dict(),
            "metadata": {}}
    torch.save(ckpt, full, _use_new_zipfile_serialization=not legacy)
    data = full.read_bytes()
    assert load_checkpoint(full)["config"] == _config()
    for n in _cut_points(len(data)):
        cut = tmp_path / f"cut{n}.pt"
        cut.write_bytes(data[:n])
        with pytest.raises(ModelError) as info:
            load_checkpoint(cut)
        message = str(info.value)
        assert f"cut{n}.pt" in message and "\n" not in message, message
        assert any(w in message for w in ("truncated", "is empty", "not a torch checkpoint", "corrupt")), message
        assert "could run code" not in message  # a damaged file is not reported as a malicious one


@pytest.mark.slow
def test_truncated_checkpoint_through_the_cli(tmp_path, ct, home, env, capsys, monkeypatch):
    data = _good(tmp_path / "good.pt").read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    assert_one_line_error(_segment(ct, tmp_path / "out", "--model-file", cut, env=env), "cut.pt", "truncated")
    assert not (tmp_path / "out").exists()
    cut.write_bytes(data[:-1])
    line = _import_in_process(cut, "cut", home, capsys, monkeypatch)
    assert "cut.pt" in line and "truncated" in line


# --------------------------------------------------------------------------- wrong sha256 in the catalogue


def test_weight_file_replaced_behind_the_catalogue_is_refused(tmp_path, ct, home, capsys, monkeypatch):
    entry = import_checkpoint(_good(tmp_path / "a.pt", seed=1), "mine", home=home)
    stage = entry["stages"]["coarse"]
    weights = home / "weights" / stage["weights"]
    assert sha256_file(weights) == stage["sha256"]
    weights.write_bytes(_good(tmp_path / "b.pt", seed=2).read_bytes())  # a valid checkpoint, but not the listed one
    line = _cli_in_process(["segment", ct, "-o", tmp_path / "out", "--model", "mine", "--device", "cpu",
                            "--progress", "none"], home, capsys, monkeypatch)
    assert weights.name in line and "fails its checksum" in line and stage["sha256"][:12] in line
    assert "reinstall" in line and not (tmp_path / "out").exists()
    line = _cli_in_process(["models", "verify", "mine"], home, capsys, monkeypatch)
    assert "failed verification: mine/coarse" in line


# ------------------------------------------------------------------------------ unknown network class


def test_unknown_network_class_is_refused_by_segment_and_import(tmp_path, ct, home, capsys, monkeypatch):
    path = tmp_path / "nosuchnet.pt"
    save_checkpoint(path, _config("NoSuchNet3000"), _state_dict())
    line = _segment_in_process(ct, tmp_path / "out", path, home, capsys, monkeypatch)
    assert "unknown network class 'NoSuchNet3000'" in line and "HanResUNet2p5D" in line
    # import used to accept it: the catalogue then listed a model that no command could load
    line = _import_in_process(path, "nosuchnet", home, capsys, monkeypatch)
    assert "nosuchnet.pt" in line and "unknown network class 'NoSuchNet3000'" in line


def test_unknown_network_class_message_names_the_file(tmp_path):
    from LiverSegLib.pipeline.predictor import Predictor

    path = tmp_path / "nosuchnet.pt"
    save_checkpoint(path, _config("NoSuchNet3000"), _state_dict())
    with pytest.raises(ModelError, match="nosuchnet.pt"):
        Predictor.from_checkpoint(path, device="cpu")


def test_import_refuses_weights_that_do_not_fit_their_network(tmp_path, home, capsys, monkeypatch):
    path = tmp_path / "misfit.pt"
    save_checkpoint(path, _config(), {**_state_dict(), "extra.weight": torch.zeros(3)})  # an unexpected tensor
    line = _import_in_process(path, "misfit", home, capsys, monkeypatch)
    assert "misfit.pt" in line and "does not fit its network" in line


# ------------------------------------------------------------------------------- junk in state_dict


JUNK = {
    "string": ("note", "hello"),
    "int": ("steps", 3),
    "list": ("layers", [1, 2, 3]),
    "nested dict": ("sub", {"w": torch.zeros(2)}),
    "none": ("missing", None),
}


@pytest.mark.parametrize("case", JUNK)
def test_non_tensor_junk_in_state_dict_is_refused(tmp_path, case):
    key, value = JUNK[case]
    path = tmp_path / "junk.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "format_version": 1, "config": _config(),
                "state_dict": {**_state_dict(), key: value}, "metadata": {}}, path)
    with pytest.raises(ModelError, match=f"junk.pt has state_dict entries that are not named tensors: {key}"):
        load_checkpoint(path)


def test_non_string_key_in_state_dict_is_refused(tmp_path):
    path = tmp_path / "junk.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "format_version": 1, "config": _config(),
                "state_dict": {**_state_dict(), 7: torch.zeros(1)}, "metadata": {}}, path)
    with pytest.raises(ModelError, match="not named tensors: 7"):
        load_checkpoint(path)


def test_junk_in_state_dict_through_the_cli(tmp_path, ct, home, capsys, monkeypatch):
    path = tmp_path / "junk.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "format_version": 1, "config": _config(),
                "state_dict": {**_state_dict(), "note": "hello"}, "metadata": {}}, path)
    line = _segment_in_process(ct, tmp_path / "out", path, home, capsys, monkeypatch)
    assert "junk.pt" in line and "not named tensors: note" in line
    line = _import_in_process(path, "junk", home, capsys, monkeypatch)
    assert "junk.pt" in line and "not named tensors" in line


# --------------------------------------------------------------- tensors that claim more than the file holds


@contextlib.contextmanager
def _address_space_capped(extra: int = 3 << 30):
    """Cap this process's address space 3 GB above its current use (Linux), so that an attempt to allocate what a
    hostile file claims fails at once instead of filling the machine's memory."""
    if not sys.platform.startswith("linux"):
        yield
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        cap = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE") + extra
    if soft == resource.RLIM_INFINITY or cap < soft:
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


BOMBS = {
    # 1.6 kB on disk; load_checkpoint's float16 -> float32 conversion used to allocate all 14.4 GB of it
    "stride-0 view": lambda: torch.zeros(1, dtype=torch.float16).expand(60000, 60000),
    "sparse": lambda: torch.sparse_coo_tensor(torch.tensor([[0], [0]]), torch.tensor([1.0]), (100000, 100000),
                                      check_invariants=True),
    "meta": lambda: torch.empty(10**6, 10**6, device="meta"),
}


@pytest.mark.parametrize("case", BOMBS)
def test_tensor_claiming_more_than_the_file_holds_is_refused(tmp_path, ct, home, capsys, monkeypatch, case):
    path = tmp_path / "bomb.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "format_version": 1, "config": _config(),
                "state_dict": {**_state_dict(), "head.conv.weight": BOMBS[case]()}, "metadata": {}}, path)
    assert path.stat().st_size < 1 << 20
    with _address_space_capped(), pytest.raises(ModelError, match="not plain stored tensors") as info:
        load_checkpoint(path)
    assert "bomb.pt" in str(info.value) and "head.conv.weight" in str(info.value)
    with _address_space_capped():
        line = _segment_in_process(ct, tmp_path / "out", path, home, capsys, monkeypatch)
    assert "bomb.pt" in line and "not plain stored tensors" in line
