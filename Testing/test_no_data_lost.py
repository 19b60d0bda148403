"""No data lost (issue 5): a ``liverseg segment --overwrite`` run killed at any moment leaves the output folder with
either the old results (byte for byte) or the complete new ones, and a Slicer run whose child is killed or
cancelled at any moment, mid-write included, leaves the MRML scene as it was.

The moments are hit on purpose: the CLI processes of these tests carry a small fault injection (``nd_hooks``,
in kill_harness.py) that marks each step of the writer in a file and, on request, stops after one step (``pause``) or
slows every step down (``slow``), so that a kill lands exactly there.

Speed: importing torch and the library costs a CLI process ~7 s of CPU here, so the many CLI kills run in
processes forked from one warm "zygote" process (``python zygote.py``, which imports once and then forks a worker
per run; each worker calls ``LiverSegLib.cli.main.main`` as ``python -m LiverSegLib`` does). The Slicer part starts
real ``python -m LiverSegLib`` children through ``SubprocessRunner``, all of them at once.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from cli_fixtures import REPO, cli_env, file_tree, make_tiny_checkpoint, write_nifti_ct
from kill_harness import (
    AFTER_MOVE,
    BEFORE_MOVE,
    HOOKS,
    NEW_THRESHOLD,
    OLD_THRESHOLD,
    RESULT_FILES,
    SWAP,
    WRAPPER,
    ZYGOTE,
    Worker,
    Zygote,
    assert_interrupted,
    copy_results,
    leftovers,
    outcome,
    read_results,
    wait_until,
)

pytestmark = pytest.mark.skipif(os.name == "nt" or not hasattr(os, "waitid"),
                                reason="POSIX signals, fork, waitid and process groups")



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
        # the Slicer runner asks for no overview picture: "lesions" is the last step before the summary
        "cancel-mid-write": ("lesions", lambda r: "lesions" in r["marks"](), "cancel", manual),
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
        run["pid"], run["folder"] = runner.pid, runner.work_folder
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
            assert isinstance(error, RunnerError) and error.exit_code == 1, (name, error)
            assert "\n" not in error.message and "SIGKILL" in error.message, error.message
        assert run["logic"].lastResult is None and not run["runner"].is_running
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
