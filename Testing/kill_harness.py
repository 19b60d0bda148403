"""The kill-test harness of test_no_data_lost.py: fault-injection hooks, the warm "zygote" that forks CLI workers,
and helpers that read an output folder back and classify what a killed run left there."""

from __future__ import annotations

import csv
import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from cli_fixtures import file_tree

from LiverSegLib.io import read_volume

OLD_THRESHOLD, NEW_THRESHOLD = "0.5", "0.95"  # the second run finds fewer lesions: different results
RESULT_FILES = {"segmentation.nii.gz", "lesions.csv", "overview.png", "summary.json"}

# The writer's steps, in order, as the fault injection names them (see HOOKS).
BEFORE_MOVE = ["segmentation", "lesions", "overview", "complete"]  # new files only in the temporary folder
# The swap of the folders: "swapped" right after a one-step exchange (the old results now in the temporary folder),
# "aside" in a two-step swap between its renames (the old folder renamed away, the new one not yet in place). A
# writer has one of the two.
SWAP = ["swapped", "aside"]
AFTER_MOVE = ["moved", "record"]  # new results in place (record: summary.json being rewritten with the write time)

HOOKS = '''"""Fault injection for test_no_data_lost.py: installed only in the CLI processes that test starts."""
import os
import time
from pathlib import Path

import LiverSegLib.outputs as outputs
from LiverSegLib.outputs import writer


def install(pause=None, slow=0.0, marks=None):
    """Mark each writer step in ``marks``; stop for good after step ``pause``; sleep ``slow`` s after the others."""

    def mark(name):
        if marks:
            with open(marks, "a", encoding="utf-8") as fh:
                fh.write(name + "\\n")
        if name == pause:
            time.sleep(120)  # the test kills this process here
        elif slow:
            time.sleep(slow)

    def then(function, name):
        def wrapped(*args, **kwargs):
            value = function(*args, **kwargs)
            mark(name)
            return value
        return wrapped

    writer.write_volume = then(writer.write_volume, "segmentation")
    writer._write_lesions_csv = then(writer._write_lesions_csv, "lesions")
    from LiverSegLib.outputs import overview  # the writer imports it when it draws the picture

    overview.render_overview = then(overview.render_overview, "overview")
    move = writer._move_into_place

    def move_into_place(tmp, out):
        mark("complete")  # every new file is in the temporary folder
        return move(tmp, out)

    writer._move_into_place = move_into_place
    outputs.write_case_outputs = then(outputs.write_case_outputs, "moved")
    rename, replace = os.rename, os.replace

    def hooked_rename(src, dst, *args, **kwargs):
        rename(src, dst, *args, **kwargs)
        if Path(dst).name.startswith(".liverseg-old-"):
            mark("aside")

    def hooked_replace(src, dst, *args, **kwargs):
        if Path(dst).name == "summary.json":
            mark("record")
        replace(src, dst, *args, **kwargs)

    os.rename, os.replace = hooked_rename, hooked_replace
    if hasattr(writer, "_exchange"):
        exchange = writer._exchange

        def hooked_exchange(a, b):
            swapped = exchange(a, b)
            if swapped:
                mark("swapped")
            return swapped

        writer._exchange = hooked_exchange


def install_from_env():
    install(os.environ.get("ND_PAUSE") or None, float(os.environ.get("ND_SLOW") or 0.0),
            os.environ.get("ND_MARKS") or None)
'''

ZYGOTE = '''"""Imports torch and LiverSegLib once, then forks one CLI worker per request line on stdin."""
import json
import os
import signal
import sys
import traceback

# Ctrl-C as in a terminal even when the test run itself was started in the background (shells start background
# jobs with SIGINT ignored, and Python then installs no KeyboardInterrupt handler).
signal.signal(signal.SIGINT, signal.default_int_handler)
hookdir, repo, log = sys.argv[1:4]
sys.path[:0] = [hookdir, repo]
proto = os.fdopen(os.dup(1), "w", buffering=1)  # replies; stdout/stderr of this process go to the log
logfd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
os.dup2(logfd, 1)
os.dup2(logfd, 2)
import torch  # noqa: E402

torch.set_num_threads(1)
from LiverSegLib.cli.main import main  # noqa: E402

import nd_hooks  # noqa: E402

unreaped = None
while line := sys.stdin.readline():
    request = json.loads(line)
    if unreaped is not None:
        os.waitpid(unreaped, 0)
        unreaped = None
    if request.get("in_process"):  # the first complete run: also loads everything the later runs need
        proto.write(json.dumps({"returncode": main(request["args"])}) + "\\n")
        continue
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
            nd_hooks.install(**request["hooks"])
            code = main(request["args"])  # what "python -m LiverSegLib" does
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    unreaped = pid  # reaped only before the next run: the test may still signal it without hitting a reused pid
    proto.write(json.dumps({"pid": pid}) + "\\n")
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    code = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
    proto.write(json.dumps({"returncode": code}) + "\\n")
'''

WRAPPER = '''#!{python}
"""``python -m LiverSegLib ...`` with the fault injection of the environment (ND_PAUSE, ND_SLOW, ND_MARKS)."""
import runpy
import sys

sys.path.insert(0, {hookdir!r})
import nd_hooks  # noqa: E402

nd_hooks.install_from_env()
if sys.argv[1:3] != ["-m", "LiverSegLib"]:
    raise SystemExit(f"unexpected command line {{sys.argv}}")
sys.argv = [sys.argv[2], *sys.argv[3:]]
runpy.run_module("LiverSegLib", run_name="__main__", alter_sys=True)
'''


# ---------------------------------------------------------------- helpers


def wait_until(condition, what: str, timeout: float = 60.0, step: float = 0.005):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(step)
    return value


class Worker:
    """One forked CLI run: its pid, output files and the writer steps it marked."""

    def __init__(self, zygote: Zygote, pid: int, folder: Path) -> None:
        self.zygote, self.pid, self.folder = zygote, pid, folder
        self.started = time.monotonic()
        self.code: int | None = None

    def _read(self, name: str) -> str:
        path = self.folder / name
        return path.read_text(encoding="utf-8") if path.exists() else ""

    @property
    def stdout(self) -> str:
        return self._read("stdout")

    @property
    def stderr(self) -> str:
        return self._read("stderr")

    @property
    def marks(self) -> list[str]:
        return self._read("marks").split()

    def saw_stage(self, stage: str) -> bool:
        lines = [line for line in self.stdout.splitlines(keepends=True) if line.endswith("\n")]  # whole lines
        return any(json.loads(line).get("stage") == stage for line in lines if line.strip())

    def kill(self, sig: int) -> None:
        os.kill(self.pid, sig)  # still our (unreaped) child of the zygote: never a reused pid

    def returncode(self, timeout: float = 60.0) -> int:
        if self.code is None:
            self.code = self.zygote.reply(timeout)["returncode"]
            self.zygote.pending = None
        return self.code


class Zygote:
    """The warm process that forks the CLI workers (see ZYGOTE)."""

    def __init__(self, proc: subprocess.Popen, log: Path) -> None:
        self.proc, self.log, self.lines = proc, log, queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.count = 0
        self.pending: Worker | None = None  # a worker whose exit status was not read (a test failed midway)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)

    def ask(self, request: dict) -> None:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()

    def reply(self, timeout: float = 90.0) -> dict:
        try:
            return json.loads(self.lines.get(timeout=timeout))
        except queue.Empty:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            pytest.fail(f"no reply from the zygote within {timeout} s; its log ends with:\n{tail}")

    def spawn(self, *args: str | os.PathLike, folder: Path, pause: str | None = None, slow: float = 0.0) -> Worker:
        if self.pending is not None:  # keep the request/reply sequence in step after a failed test
            self.pending.kill(signal.SIGKILL)
            self.pending.returncode()
        self.count += 1
        files = folder / f"worker{self.count}"
        files.mkdir()
        self.ask({"args": ["segment", *map(str, args)], "stdout": str(files / "stdout"),
                  "stderr": str(files / "stderr"),
                  "hooks": {"pause": pause, "slow": slow, "marks": str(files / "marks")}})
        self.pending = Worker(self, self.reply()["pid"], files)
        return self.pending


def copy_results(src: Path, dst: Path) -> dict:
    """``src`` copied to ``dst`` with the mtimes; the file tree of the copy."""
    shutil.copytree(src, dst)
    return file_tree(dst)


def leftovers(parent: Path, out: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p != out)


def read_results(out: Path) -> dict:
    """Every result file of ``out`` read back (fails on a missing, truncated or unreadable one)."""
    with open(out / "lesions.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    png = (out / "overview.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png.endswith(b"IEND\xaeB`\x82"), "overview.png is incomplete"
    return {"segmentation": read_volume(out / "segmentation.nii.gz"), "lesions": rows,
            "summary": json.loads((out / "summary.json").read_text(encoding="utf-8"))}


def outcome(out: Path, old_tree: dict, new: dict, ct) -> str:
    """"old" when ``out`` is the old results byte for byte, "new" when it is the complete new set; fails otherwise."""
    assert out.is_dir(), f"{out.name} is gone: neither the old results nor the new ones are there"
    tree = file_tree(out)
    if tree == old_tree:
        return "old"
    visible = {name for name in tree if not name.startswith(".")}
    assert visible == RESULT_FILES, f"neither the old results nor the complete new set: {sorted(tree)}"
    # A kill inside the CLI's rewrite of summary.json (os.replace of a temporary file) can leave that hidden file.
    assert set(tree) - visible <= {".summary.json.tmp"}, sorted(tree)
    got = read_results(out)
    seg = got["segmentation"]
    assert seg.same_grid(ct, atol=1e-3) and seg.array_zyx.dtype == np.uint8
    np.testing.assert_array_equal(seg.array_zyx, new["segmentation"].array_zyx)
    assert got["lesions"] == new["lesions"]
    for key in ("lesion_count", "liver_volume_ml", "lesion_volume_ml", "outputs"):
        assert got["summary"][key] == new["summary"][key], key
    return "new"


def assert_interrupted(worker: Worker, code: int) -> None:
    """Ctrl-C: exit code 130, one "interrupted" line on stderr, no traceback."""
    assert code == 130, (code, worker.stderr)
    lines = worker.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("liverseg: interrupted"), worker.stderr
    assert '"event": "done"' not in worker.stdout
