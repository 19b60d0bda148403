"""Several ``liverseg`` processes sharing one ``$LIVERSEG_HOME`` at once: nobody sees a half-written file.

(a) two processes importing different checkpoints at the same moment both end up in models.json, each with a
weight file matching its sha256; (b) while one process keeps re-importing (``--overwrite``) the same id, another
keeps reading the catalogue and loading the weights it lists, and never meets invalid JSON, a checksum mismatch or
a missing file; (c) two processes fetching the same sample source build one complete tree.

The workers are real processes that import LiverSegLib first, say "ready", and start their work when the test
answers "go" to all of them, so that the critical sections really overlap (two plain ``liverseg`` commands started
together would mostly overlap their imports).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from cli_fixtures import REPO

from LiverSegLib.config import NetworkSpec, StageConfig
from LiverSegLib.networks import HanResUNet2p5D
from LiverSegLib.pipeline.stage import stage_config_dict
from LiverSegLib.weights import save_checkpoint, sha256_file

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the catalogue lock is POSIX-only (fcntl)")
KWARGS = {"in_channels": 5, "out_channels": 3, "features": [4, 8]}


def _checkpoint(path: Path, seed: int) -> str:
    """A small valid LiverSeg checkpoint; different seeds give different files (and sha256)."""
    stage = StageConfig(network=NetworkSpec("HanResUNet2p5D", dict(KWARGS)), weights="w.pt", sha256="0" * 64,
                        classes=(0, 1, 2), hu_window=(-100.0, 200.0), context_slices=5, batch_cpu=4)
    torch.manual_seed(seed)
    return save_checkpoint(path, stage_config_dict(stage), HanResUNet2p5D(**KWARGS).state_dict(),
                           metadata={"version": str(seed)})


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> list[tuple[Path, str]]:
    folder = tmp_path_factory.mktemp("ckpts")
    return [(folder / f"c{i}.pt", _checkpoint(folder / f"c{i}.pt", i)) for i in range(4)]


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "LIVERSEG_HOME": str(home), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


class Workers:
    """One process per program: each imports what it needs, says "ready", then runs one job per line sent to it (a
    JSON list of arguments to its ``job`` function) and answers one JSON line. ``run`` sends one job to every worker
    at once, after all are ready, so their work really overlaps."""

    def __init__(self, codes: list[str], env: dict[str, str]) -> None:
        self.procs = []
        for code in codes:
            program = ("import json, sys, time\n" + code + "\nprint('ready', flush=True)\n"
                       "for line in sys.stdin:\n    print(json.dumps(job(*json.loads(line))), flush=True)\n")
            self.procs.append(subprocess.Popen([sys.executable, "-c", program], cwd=REPO, env=env, text=True,
                                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        for proc in self.procs:
            line = proc.stdout.readline()
            assert line.strip() == "ready", proc.stderr.read()

    def run(self, *jobs: list) -> list:
        for proc, args in zip(self.procs, jobs, strict=True):
            proc.stdin.write(json.dumps([str(a) if isinstance(a, Path) else a for a in args]) + "\n")
            proc.stdin.flush()
        answers = []
        for proc in self.procs:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()  # the worker died: its traceback
            answers.append(json.loads(line))
        return answers

    def close(self) -> list[str]:
        """End the workers; what each wrote on stderr."""
        return [proc.communicate(timeout=60)[1] for proc in self.procs]

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


# ``liverseg ARGS`` in the worker's process: (exit code, what it printed)
CLI = """
import contextlib, io
from LiverSegLib.cli.main import main
import LiverSegLib.model_import, LiverSegLib.pipeline.checkpoint_model, LiverSegLib.registry, jsonschema

def job(*argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return [code, out.getvalue()]
"""


def _catalogue(home: Path) -> dict:
    return json.loads((home / "models.json").read_text())  # raises on invalid JSON


# --------------------------------------------------------------------------- (a) two imports at the same moment


def test_two_simultaneous_imports_both_land_with_matching_weights(tmp_path, checkpoints):
    home = tmp_path / "home"
    with Workers([CLI, CLI], _env(home)) as workers:
        for round_ in range(4):
            ids = [f"round{round_}-a", f"round{round_}-b"]
            results = workers.run(*(["models", "import", checkpoints[k][0], "--id", ids[k]] for k in range(2)))
            assert [code for code, _ in results] == [0, 0], results
            entries = {m["id"]: m for m in _catalogue(home)["models"]}
            assert set(entries) == {f"round{r}-{x}" for r in range(round_ + 1) for x in "ab"}  # none lost
            for k, model_id in enumerate(ids):
                stage = entries[model_id]["stages"]["coarse"]
                assert stage["sha256"] == checkpoints[k][1]
                assert sha256_file(home / "weights" / stage["weights"]) == stage["sha256"]
        assert workers.close() == ["", ""]
    staged = [p.name for p in [*home.iterdir(), *(home / "weights").iterdir()] if p.name.startswith(".")
              and p.name != ".models.lock"]
    assert staged == []  # no temporary file left behind


# ------------------------------------------------- (b) re-importing one id while another process reads it


WRITER = """
from pathlib import Path
from LiverSegLib.model_import import import_checkpoint

def job(n, done_file, *ckpts):
    try:
        for i in range(n):
            import_checkpoint(ckpts[i % len(ckpts)], "shared", overwrite=True)
    finally:
        Path(done_file).touch()  # the reader's signal to stop
    return n
"""

READER = """
import collections, os
from LiverSegLib.errors import ModelError
from LiverSegLib.registry import load_registry
from LiverSegLib.weights import load_checkpoint

def job(done_file):
    give_up = time.time() + 120
    seen, versions = collections.Counter(), set()
    while not os.path.exists(done_file) and time.time() < give_up:
        try:
            model = load_registry().get("shared")
            ckpt = load_checkpoint(model.weight_path(model.coarse.weights), model.coarse.sha256)
            versions.add(ckpt["metadata"]["version"])
            seen["ok"] += 1
        except ModelError as exc:  # anything else ends the worker, and the test with it
            seen["ModelError: " + str(exc)[:300]] += 1
    return {"seen": seen, "versions": sorted(versions)}
"""


def test_reader_never_sees_a_half_replaced_model_while_it_is_reimported(tmp_path, checkpoints):
    """Not even a clean "fails its checksum" is accepted here. It used to happen: the import replaced
    ``weights/ID.pt`` before models.json, so a reader holding the old catalogue hashed the new file. Weight files
    are now named by their content (``ID-<sha12>.pt``) and the old one outlives the catalogue that lists it."""
    home = tmp_path / "home"
    from LiverSegLib.model_import import import_checkpoint

    import_checkpoint(checkpoints[0][0], "shared", home=home)  # the reader finds a model from its first read
    done = tmp_path / "writer-done"
    with Workers([WRITER, READER], _env(home)) as workers:
        imports, report = workers.run([12, done, *(c for c, _ in checkpoints)], [done])
        assert workers.close() == ["", ""]
    assert set(report["seen"]) == {"ok"}, report["seen"]  # no invalid JSON, no checksum mismatch, no missing file
    assert imports == 12 and report["seen"]["ok"] >= 12, (imports, report)
    assert len(report["versions"]) >= 2, report  # the reader really saw the model change under it
    # the end state: one entry, its weight file matching, stale weight files of the id cleaned up (the previous
    # one may stay for readers still holding the previous catalogue)
    entry = next(m for m in _catalogue(home)["models"] if m["id"] == "shared")
    stage = entry["stages"]["coarse"]
    assert sha256_file(home / "weights" / stage["weights"]) == stage["sha256"]
    assert len([p for p in (home / "weights").iterdir() if p.name.startswith("shared")]) <= 2
    assert not [p for p in (home / "weights").iterdir() if p.name.startswith(".")]


def test_overwrite_keeps_the_file_the_previous_catalogue_lists(tmp_path, checkpoints):
    """The deterministic core of the test above: after ``--overwrite``, the weight file that the previous catalogue
    lists still holds the bytes of its sha256 (a reader holding that catalogue loads it cleanly); the import after
    that removes it, and only the current and the previous file of the id remain."""
    from LiverSegLib.model_import import import_checkpoint

    home = tmp_path / "home"
    listed = []
    for k in range(3):
        entry = import_checkpoint(checkpoints[k][0], "shared", overwrite=True, home=home)
        listed.append(entry["stages"]["coarse"])
        for stage in listed[-2:]:  # the current catalogue's file and the previous one
            assert sha256_file(home / "weights" / stage["weights"]) == stage["sha256"]
    assert len({s["weights"] for s in listed}) == 3  # a new name for new content
    assert not (home / "weights" / listed[0]["weights"]).exists()  # stale: removed
    assert sorted(p.name for p in (home / "weights").iterdir()) == sorted(s["weights"] for s in listed[1:])
    # re-importing the same content keeps its name, and the file stays valid throughout
    again = import_checkpoint(checkpoints[2][0], "shared", overwrite=True, home=home)["stages"]["coarse"]
    assert again == listed[2] and sha256_file(home / "weights" / again["weights"]) == again["sha256"]


# --------------------------------------------------------------- (c) two fetches of the same sample source


FETCH = """
from LiverSegLib.data import samples

def job(cache, spec):
    samples.SOURCES["fake"] = {**spec, "members": tuple(spec["members"])}
    return str(samples.fetch_source("fake", cache))
"""


def test_two_simultaneous_fetches_of_one_source_give_one_complete_tree(tmp_path):
    members = {f"pkg/data/f{i:03d}.bin": hashlib.sha256(str(i).encode()).digest() * 2048 for i in range(150)}
    members["pkg/README"] = b"readme"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:  # stored, not deflated: extraction takes a while, so the two overlap
        for name, data in members.items():
            zf.writestr(name, data)
    spec = {"requirement": "fake==1.0", "sdist": False, "archive": "fake-1.0.zip", "licence": "x", "strip": "pkg/",
            "sha256": hashlib.sha256(buf.getvalue()).hexdigest(), "members": ["data/", "README"]}
    with Workers([FETCH, FETCH], _env(tmp_path / "home")) as workers:
        for round_ in range(4):
            cache = tmp_path / f"cache{round_}"
            cache.mkdir()
            (cache / "fake-1.0.zip").write_bytes(buf.getvalue())  # the hand-placed archive: no pip, no network
            assert workers.run([cache, spec], [cache, spec]) == [str(cache / "fake")] * 2
            root = cache / "fake"
            assert (root / ".sha256").read_text().strip() == spec["sha256"]
            for name, data in members.items():
                assert (root / name.removeprefix("pkg/")).read_bytes() == data
            assert sorted(p.name for p in cache.iterdir()) == ["fake", "fake-1.0.zip"]  # no staging folder left
        assert workers.close() == ["", ""]
