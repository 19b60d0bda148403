"""No data lost (issue 5): a ``liverseg segment --overwrite`` run killed at any moment leaves the output folder with
either the old results (byte for byte) or the complete new ones, and a Slicer run whose child is killed or
cancelled at any moment, mid-write included, leaves the MRML scene as it was.

The moments are hit on purpose: the CLI processes of these tests carry a small fault injection (``nd_hooks``,
written below) that marks each step of the writer in a file and, on request, stops after one step (``pause``) or
slows every step down (``slow``), so that a kill lands exactly there.

Speed: importing torch and the library costs a CLI process ~7 s of CPU here, so the many CLI kills run in
processes forked from one warm "zygote" process (``python zygote.py``, which imports once and then forks a worker
per run; each worker calls ``LiverSegLib.cli.main.main`` as ``python -m LiverSegLib`` does). The Slicer part starts
real ``python -m LiverSegLib`` children through ``SubprocessRunner``, all of them at once.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from cli_fixtures import REPO, cli_env, file_tree, make_tiny_checkpoint, write_nifti_ct

from LiverSegLib.io import read_volume

pytestmark = pytest.mark.skipif(os.name == "nt" or not hasattr(os, "waitid"),
                                reason="POSIX signals, fork, waitid and process groups")

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
    writer.render_overview = then(writer.render_overview, "overview")
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


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    return write_nifti_ct(tmp_path_factory.mktemp("ct"))


@pytest.fixture(scope="module")
def hookdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hooks")
    (folder / "nd_hooks.py").write_text(HOOKS, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def zygote(tmp_path_factory, hookdir, ckpt, ct):
    """The warm zygote, which has made the old results (``pristine``) with its first, in-process run."""
    root = tmp_path_factory.mktemp("zygote")
    (root / "zygote.py").write_text(ZYGOTE, encoding="utf-8")
    log = root / "zygote.log"
    proc = subprocess.Popen([sys.executable, str(root / "zygote.py"), str(hookdir), str(REPO), str(log)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
                            env=cli_env(root / "home"), start_new_session=True)
    try:
        z = Zygote(proc, log)
        z.pristine = root / "pristine"
        z.args = (ct[0], "--model-file", ckpt, "--device", "cpu")
        z.ask({"in_process": True, "args": ["segment", *map(str, z.args), "-o", str(z.pristine), "--progress",
                                            "none", "--lesion-threshold", OLD_THRESHOLD]})
        assert z.reply(timeout=180)["returncode"] == 0, log.read_text()
        yield z
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the zygote and any worker it forked
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def new_results(zygote, tmp_path_factory, ct):
    """The complete new results of an uninterrupted ``--overwrite`` run over the old ones."""
    parent = tmp_path_factory.mktemp("reference")
    out = parent / "out"
    copy_results(zygote.pristine, out)
    worker = zygote.spawn(*zygote.args, "-o", out, "--overwrite", "--progress", "json", "--lesion-threshold",
                          NEW_THRESHOLD, folder=parent)
    assert worker.returncode() == 0, worker.stderr
    swap = [mark for mark in worker.marks if mark in SWAP]
    assert len(swap) == 1 and worker.marks == [*BEFORE_MOVE, *swap, *AFTER_MOVE], worker.marks
    assert leftovers(parent, out) == [worker.folder.name]
    new = read_results(out)
    old = read_results(zygote.pristine)
    assert not np.array_equal(new["segmentation"].array_zyx, old["segmentation"].array_zyx), "runs do not differ"
    assert set(file_tree(out)) == RESULT_FILES
    return new


def overwrite_run(zygote, parent: Path, out: Path, **hooks) -> Worker:
    return zygote.spawn(*zygote.args, "-o", out, "--overwrite", "--progress", "json", "--lesion-threshold",
                        NEW_THRESHOLD, folder=parent, **hooks)


# ---------------------------------------------------------------- the CLI


def test_ctrl_c_before_the_write_exits_130_with_one_line_and_keeps_the_old_results(zygote, tmp_path, ct):
    out = tmp_path / "out"
    old_tree = copy_results(zygote.pristine, out)
    worker = overwrite_run(zygote, tmp_path, out)
    wait_until(lambda: worker.saw_stage("fine"), "the fine stage")
    worker.kill(signal.SIGINT)
    assert_interrupted(worker, worker.returncode())
    assert worker.stderr.strip() == "liverseg: interrupted; no output was written"
    assert not worker.marks  # the writer never started
    assert file_tree(out) == old_tree
    assert leftovers(tmp_path, out) == [worker.folder.name]  # nothing of the writer's


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
@pytest.mark.parametrize("moment", ["write-event", *BEFORE_MOVE, *SWAP, *AFTER_MOVE])
def test_a_run_killed_while_it_writes_leaves_the_old_or_the_complete_new_results(zygote, new_results, tmp_path, ct,
                                                                                 moment, sig):
    out = tmp_path / "out"
    old_tree = copy_results(zygote.pristine, out)
    if moment == "write-event":  # no pause: the kill lands as soon as the "write" progress event is out
        worker = overwrite_run(zygote, tmp_path, out)
        wait_until(lambda: worker.saw_stage("write"), "the write progress event")
    else:
        worker = overwrite_run(zygote, tmp_path, out, pause=moment)
        wait_until(lambda: moment in worker.marks or '"event": "done"' in worker.stdout, f"writer step {moment}")
        if moment not in worker.marks:  # the other kind of swap: this moment does not exist in this writer
            assert moment in SWAP and worker.returncode() == 0
            assert outcome(out, old_tree, new_results, ct[1]) == "new"
            return
    worker.kill(sig)
    code = worker.returncode()
    got = outcome(out, old_tree, new_results, ct[1])
    if moment in BEFORE_MOVE:
        assert got == "old"
    elif moment in AFTER_MOVE:
        assert got == "new"
    others = [name for name in leftovers(tmp_path, out) if name != worker.folder.name]
    assert all(name.startswith((".liverseg-tmp-", ".liverseg-old-")) for name in others), others  # hidden, ours
    if sig == signal.SIGINT:
        assert_interrupted(worker, code)
        assert others == [], "Ctrl-C must not leave temporary folders behind"
    else:
        assert code == -signal.SIGKILL


@pytest.mark.parametrize("seed", [1, 3])
def test_kills_at_random_moments_leave_the_old_or_the_complete_new_results(zygote, new_results, tmp_path, ct, seed):
    rng = random.Random(seed)
    seen = set()
    for sig in (signal.SIGKILL, signal.SIGINT):
        parent = tmp_path / sig.name
        parent.mkdir()
        out = parent / "out"
        old_tree = copy_results(zygote.pristine, out)
        delay = rng.uniform(0.1, 1.6)  # from just after the start to past the (slowed) write
        worker = overwrite_run(zygote, parent, out, slow=0.1)
        time.sleep(max(0.0, worker.started + delay - time.monotonic()))
        worker.kill(sig)
        code = worker.returncode()
        got = outcome(out, old_tree, new_results, ct[1])
        seen.add((sig.name, got, tuple(worker.marks[-1:])))
        if code == 0:  # finished before the signal
            assert got == "new" and leftovers(parent, out) == [worker.folder.name]
            continue
        if sig == signal.SIGINT:
            assert_interrupted(worker, code)
            assert leftovers(parent, out) == [worker.folder.name]
        else:
            assert code == -signal.SIGKILL
        if "complete" not in worker.marks:
            assert got == "old", worker.marks  # interrupted before the move: the old results, untouched
    print(f"seed {seed}: {sorted(seen)}")


def test_stale_temporary_folders_of_killed_runs_are_ignored_by_later_runs(zygote, new_results, tmp_path, ct):
    out = tmp_path / "out"
    old_tree = copy_results(zygote.pristine, out)
    worker = overwrite_run(zygote, tmp_path, out, pause="complete")  # complete new files only in the temp folder
    wait_until(lambda: "complete" in worker.marks, "the complete temporary folder")
    worker.kill(signal.SIGKILL)
    assert worker.returncode() == -signal.SIGKILL
    stale = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert [p.name[:14] for p in stale] == [".liverseg-tmp-"]  # hidden: no case folder of a batch, no "results"
    stale_tree = file_tree(stale[0])
    assert file_tree(out) == old_tree

    refused = zygote.spawn(*zygote.args, "-o", out, "--progress", "none", folder=tmp_path)
    assert refused.returncode() == 2 and "--overwrite" in refused.stderr  # old results: never without --overwrite
    assert file_tree(out) == old_tree
    beside = zygote.spawn(*zygote.args, "-o", tmp_path / "other", "--progress", "none", folder=tmp_path)
    assert beside.returncode() == 0, beside.stderr  # the stale folder beside it is not taken for results
    again = overwrite_run(zygote, tmp_path, out)
    assert again.returncode() == 0, again.stderr
    assert outcome(out, old_tree, new_results, ct[1]) == "new"
    assert set(file_tree(out)) == RESULT_FILES  # nothing of the stale folder got in
    assert file_tree(stale[0]) == stale_tree  # ignored, not taken over or half removed
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [stale[0].name]


# ---------------------------------------------------------------- the Slicer logic with real child processes


@pytest.fixture(scope="module")
def slicer_case(tmp_path_factory, hookdir, ct):
    sf = pytest.importorskip("slicer_fixtures")  # skips without slicer-core
    root = tmp_path_factory.mktemp("slicer")
    scene = sf.slicer.vtkMRMLScene()
    node = sf.load_volume_node(scene, ct[0])
    sf.put_under_study(scene, node)
    manual = sf.slicer.vtkMRMLSegmentationNode()  # an earlier segmentation that no run may touch
    manual.SetName("manual")
    scene.AddNode(manual)
    from LiverSegSlicer.segmentation_writer import ensureConverterRules

    ensureConverterRules()  # as the logic does, so that an empty binary-labelmap segment can be made
    manual.GetSegmentation().AddEmptySegment("Tumour", "Tumour")
    wrapper = root / "liverseg_with_hooks"
    wrapper.write_text(WRAPPER.format(python=sys.executable, hookdir=str(hookdir)), encoding="utf-8")
    wrapper.chmod(0o755)
    return sf, scene, node, wrapper, root


def _snapshot(sf, scene) -> tuple:
    names = tuple((scene.GetNthNode(i).GetID(), scene.GetNthNode(i).GetName(), scene.GetNthNode(i).GetClassName())
                  for i in range(scene.GetNumberOfNodes()))
    return sf.scene_state(scene), names, scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")


def test_killed_or_cancelled_slicer_runs_leave_the_scene_unchanged(slicer_case, ckpt, monkeypatch):
    """Four real children at once, each stopped at another moment: SIGKILL of the process group in the model run,
    SIGKILL of the pid mid-write, cancel() mid-write, SIGKILL after the results were complete (the last two with an
    existing segmentation node as the output, which must stay as it was)."""
    from LiverSegSlicer import LiverSegLogic, RunnerError, SubprocessRunner

    from LiverSegLib.errors import CancelledError

    sf, scene, node, wrapper, root = slicer_case
    temp = root / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # the runners' work folders, to check they go
    before = _snapshot(sf, scene)
    manual = scene.GetFirstNodeByName("manual")
    plans = {  # name: (pause after writer step, when to act, action, output segmentation)
        "killpg-in-model": (None, lambda r: ("fine" in r["stages"]), "killpg", None),
        "kill-mid-write": ("segmentation", lambda r: "segmentation" in r["marks"](), "kill", None),
        "cancel-mid-write": ("overview", lambda r: "overview" in r["marks"](), "cancel", manual),
        "killpg-complete": ("record", lambda r: "record" in r["marks"](), "killpg", manual),
    }
    runs = {}
    for name, (pause, _, _, output) in plans.items():
        marks = root / f"{name}.marks"
        env = {**sf.subprocess_env(root / "home"), "ND_PAUSE": pause or "", "ND_MARKS": str(marks)}
        runner = SubprocessRunner(python=str(wrapper), env=env)
        logic = LiverSegLogic(scene, runner)
        run = {"logic": logic, "runner": runner, "stages": [], "acted": False, "error": None,
               "marks": lambda marks=marks: marks.read_text().split() if marks.exists() else []}
        logic.start(node, output, modelFile=str(ckpt), device="cpu", lesionThreshold=0.5,
                    progress=lambda stage, fraction, run=run: run["stages"].append(stage))
        run["pid"], run["folder"] = runner.pid, runner.workFolder
        runs[name] = run
    try:
        deadline = time.monotonic() + 150
        while any(run["logic"].isRunning for run in runs.values()):
            assert time.monotonic() < deadline, {n: (r["stages"][-1:], r["marks"]()) for n, r in runs.items()}
            for name, run in runs.items():
                if not run["logic"].isRunning:
                    continue
                _, ready, action, _ = plans[name]
                if not run["acted"] and ready(run):
                    if name.endswith("mid-write"):  # really mid-write: a half-filled temporary folder
                        tmp = list((run["folder"]).glob(".liverseg-tmp-*"))
                        assert len(tmp) == 1 and not (tmp[0] / "summary.json").exists(), tmp
                    if name == "killpg-complete":
                        assert (run["folder"] / "output" / "summary.json").is_file()
                    if action == "cancel":
                        run["logic"].cancel()
                    else:
                        (os.killpg if action == "killpg" else os.kill)(run["pid"], signal.SIGKILL)
                    run["acted"] = True
                try:
                    assert run["logic"].poll(timeout=0.02) is None, f"{name} finished although stopped"
                except (RunnerError, CancelledError) as exc:
                    run["error"] = exc
    finally:
        for run in runs.values():
            if run["logic"].isRunning:
                run["runner"].cancel()
    for name, run in runs.items():
        assert run["acted"], name
        if plans[name][2] == "cancel":
            assert isinstance(run["error"], CancelledError), (name, run["error"])
        else:
            error = run["error"]
            assert isinstance(error, RunnerError) and error.exitCode == 1, (name, error)
            assert "\n" not in error.message and "SIGKILL" in error.message, error.message
        assert run["logic"].lastResult is None and not run["runner"].isRunning
        assert not sf.process_group_alive(run["pid"]), name
        assert not run["folder"].exists(), f"{name}: work folder left behind"
    assert _snapshot(sf, scene) == before  # same nodes, no half-made segmentation node, "manual" untouched
    assert list(temp.iterdir()) == []


# ---------------------------------------------------------------- the writer's folder swap, in process


def test_the_folder_swap_is_one_step_where_possible_and_restores_the_old_results_elsewhere(tmp_path, monkeypatch):
    from LiverSegLib.outputs import writer

    def folders() -> tuple[Path, Path]:
        out, new = tmp_path / "out", tmp_path / ".liverseg-tmp-test"
        for folder, text in ((out, "old"), (new, "new")):
            folder.mkdir()
            (folder / "summary.json").write_text(text)
        return new, out

    if sys.platform.startswith("linux"):  # renameat2(RENAME_EXCHANGE): never a moment without results in "out"
        new, out = folders()
        swaps, exchange = [], writer._exchange
        monkeypatch.setattr(writer, "_exchange", lambda a, b: swaps.append(exchange(a, b)) or swaps[-1])
        writer._move_into_place(new, out)
        assert swaps == [True] and (out / "summary.json").read_text() == "new"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
        shutil.rmtree(out)

    monkeypatch.setattr(writer, "_exchange", lambda a, b: False)  # other systems and file systems: two renames
    new, out = folders()
    writer._move_into_place(new, out)
    assert (out / "summary.json").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    shutil.rmtree(out)

    new, out = folders()
    rename = os.rename

    def failing_second_rename(src, dst):
        if Path(src) == new and Path(dst) == out:
            raise OSError("injected rename failure")
        rename(src, dst)

    monkeypatch.setattr(writer.os, "rename", failing_second_rename)
    with pytest.raises(OSError, match="injected rename failure"):
        writer._move_into_place(new, out)
    assert (out / "summary.json").read_text() == "old"  # put back
    assert sorted(p.name for p in tmp_path.iterdir()) == [new.name, "out"]  # the caller removes the new folder
