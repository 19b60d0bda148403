"""The runners: the real CLI in a child process (progress, results, failures, cancel kills the process group) and
the in-process runner (model reuse, start/poll, cancel), both behind LiverSegLogic on a real MRML scene."""

from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np
import pytest

import slicer_fixtures  # isort: skip # noqa: F401 (first: skips without slicer-core, puts LiverSeg/ on sys.path)
from LiverSegSlicer import InProcessRunner, LiverSegLogic, RunnerError, SubprocessRunner, volumeFromNode
from slicer_fixtures import (
    SHAPE,
    SPACING,
    export_to_grid,
    load_volume_node,
    make_checkpoint,
    process_group_alive,
    put_under_study,
    scene_state,
    slicer,
    subprocess_env,
)

import LiverSegLib
from LiverSegLib.data.phantoms import make_phantom
from LiverSegLib.errors import CancelledError
from LiverSegLib.io import write_volume
from LiverSegLib.pipeline.checkpoint_model import model_from_checkpoint
from LiverSegLib.runs import SegmentOptions
from LiverSegLib.runs.subprocess_runner import python_executable

STAGES = ["read", "coarse", "fine", "post", "write"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A phantom CT loaded by Slicer's storage node under a study, a tiny checkpoint, a private temp folder."""
    root = tmp_path_factory.mktemp("runners")
    ct, _ = make_phantom(SHAPE, SPACING, seed=21, origin_xyz=(12.0, -40.0, 800.0))
    path = write_volume(ct, root / "ct.nrrd")
    ckpt = make_checkpoint(root / "tiny.pt", make_phantom(SHAPE, SPACING, seed=3)[0])
    scene = slicer.vtkMRMLScene()
    node = load_volume_node(scene, path)
    _, study = put_under_study(scene, node)
    temp = root / "tmp"
    temp.mkdir()
    return {"root": root, "ckpt": ckpt, "scene": scene, "node": node, "study": study, "temp": temp,
            "env": subprocess_env(root / "home")}


@pytest.fixture
def private_tempdir(setup, monkeypatch):
    """The runner's temporary folders go to a folder the test can inspect (and must find empty afterwards)."""
    monkeypatch.setattr(tempfile, "tempdir", str(setup["temp"]))
    yield setup["temp"]
    assert not list(setup["temp"].iterdir()), "temporary run folders were left behind"


def test_subprocess_runner_gives_the_library_result_in_the_scene(setup, private_tempdir):
    scene, node = setup["scene"], setup["node"]
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = LiverSegLib.segment(volumeFromNode(node), model=model_from_checkpoint(setup["ckpt"]),
                                        device="cpu", lesion_threshold=0.5)
    finally:
        torch.set_num_threads(threads)
    logs, events = [], []
    logic = LiverSegLogic(scene, SubprocessRunner(env=setup["env"], log=logs.append))
    seg = logic.process(node, modelFile=str(setup["ckpt"]), device="cpu", lesionThreshold=0.5,
                        progress=lambda s, f: events.append((s, f)))
    labels = reference.labelmap.array_zyx
    assert np.count_nonzero(labels == 2) > 0
    for name, expected in (("Liver", labels >= 1), ("Liver lesion", labels == 2)):
        segment_id = seg.GetSegmentation().GetSegmentIdBySegmentName(name)
        np.testing.assert_array_equal(export_to_grid(scene, seg, segment_id, node), expected, err_msg=name)
    order = [s for i, (s, _) in enumerate(events) if i == 0 or events[i - 1][0] != s]
    assert order == [*STAGES, "import"], order
    assert all(0.0 <= f <= 1.0 for _, f in events)
    assert logic.lastResult.model_id == "slicer-test-tiny"
    assert logic.lastResult.details["lesion_threshold"] == 0.5  # the user's value reached the child
    assert [lb.name for lb in logic.lastResult.labels] == ["Liver", "Liver lesion"]
    assert len(logic.lastResult.lesions) == len(reference.lesions)
    assert seg.GetAttribute("LiverSeg.LesionCount") == str(len(reference.lesions))
    sh = scene.GetSubjectHierarchyNode()
    assert sh.GetItemParent(sh.GetItemByDataNode(seg)) == setup["study"]
    logic.removeNode(seg)


def test_the_models_own_lesion_threshold_reaches_the_child_unless_the_user_sets_one(setup, private_tempdir):
    """Issue 10: the GUI used to pass 0.8 always, overriding a model's models.json threshold."""
    scene, node = setup["scene"], setup["node"]
    model_value = model_from_checkpoint(setup["ckpt"]).cascade.lesion_threshold
    logic = LiverSegLogic(scene, SubprocessRunner(env=setup["env"]))
    seg = logic.process(node, modelFile=str(setup["ckpt"]), device="cpu", quick=True)  # no threshold given
    assert logic.lastResult.details["lesion_threshold"] == model_value != 0.5
    logic.removeNode(seg)
    from LiverSegLib.registry import load_registry

    assert LiverSegLogic.modelLesionThreshold() == load_registry().get().cascade.lesion_threshold


def test_cancel_kills_the_process_group_and_leaves_the_scene_unchanged(setup, private_tempdir):
    scene, node = setup["scene"], setup["node"]
    runner = SubprocessRunner(env=setup["env"])
    logic = LiverSegLogic(scene, runner)
    before = scene_state(scene)
    events = []
    logic.start(node, modelFile=str(setup["ckpt"]), device="cpu", progress=lambda s, f: events.append(s))
    pid, folder = runner.pid, runner.work_folder
    header = (folder / "input.nrrd").read_bytes()[:400].decode("latin-1")
    assert "encoding: raw" in header  # uncompressed exchange file
    if os.name != "nt":
        assert os.getpgid(pid) == pid  # the child leads its own process group
    deadline = time.monotonic() + 60
    while "coarse" not in events:  # wait until the child is inside the model run
        assert logic.poll(timeout=0.05) is None
        assert time.monotonic() < deadline, "no model progress from the child within 60 s"
    logic.cancel()
    with pytest.raises(CancelledError):
        logic.poll()
    assert not logic.isRunning
    assert not process_group_alive(pid), "processes of the cancelled run are still alive"
    assert scene_state(scene) == before
    assert not folder.exists()


def test_a_progress_callback_can_cancel_a_blocking_run(setup, private_tempdir):
    runner = SubprocessRunner(env=setup["env"])
    seen = []

    def stop(stage, fraction):
        seen.append(runner.pid)
        raise CancelledError("stop")

    with pytest.raises(CancelledError):
        runner.run(volumeFromNode(setup["node"]), SegmentOptions(model_file=str(setup["ckpt"]), device="cpu"), stop)
    assert seen and not runner.is_running
    if os.name != "nt":
        assert not process_group_alive(seen[0])


def test_cli_failure_becomes_a_runner_error_with_its_message(setup, private_tempdir):
    scene, node = setup["scene"], setup["node"]
    before = scene_state(scene)
    logic = LiverSegLogic(scene, SubprocessRunner(env=setup["env"]))
    missing = setup["root"] / "gone.pt"
    with pytest.raises(RunnerError) as info:
        logic.process(node, modelFile=str(missing), device="cpu")
    assert info.value.exit_code == 2 and info.value.is_input_error
    assert "model file not found" in info.value.message and "gone.pt" in info.value.message
    assert "\n" not in info.value.message
    assert scene_state(scene) == before


@pytest.mark.skipif(os.name == "nt", reason="POSIX shell script")
def test_a_killed_child_is_reported_as_such(setup, private_tempdir, tmp_path):
    script = tmp_path / "dies.sh"
    script.write_text("#!/bin/sh\nkill -9 $$\n")
    script.chmod(0o755)
    before = scene_state(setup["scene"])
    logic = LiverSegLogic(setup["scene"], SubprocessRunner(python=str(script)))
    with pytest.raises(RunnerError) as info:
        logic.process(setup["node"])
    assert info.value.exit_code == 1 and "SIGKILL" in info.value.message and "memory" in info.value.message
    assert scene_state(setup["scene"]) == before


def test_command_line_and_interpreter():
    runner = SubprocessRunner(python="/opt/py")
    cmd = runner.command("in.nrrd", "out", SegmentOptions(model="m1", device="cpu", lesion_threshold=0.65, quick=True,
                                                          surfaces="obj", overwrite=True))
    assert cmd[:4] == ["/opt/py", "-m", "LiverSegLib", "segment"]
    text = " ".join(cmd)
    for part in ("in.nrrd -o out", "--progress json", "--model m1", "--device cpu", "--lesion-threshold 0.65",
                 "--quick", "--no-overview"):
        assert part in text
    # the child's folder is private and new; surfaces are the caller's business
    assert "--overwrite" not in text and "--surfaces" not in text
    file_cmd = " ".join(runner.command("in.nrrd", "out", SegmentOptions(model_file="/w/x.pt")))
    # no threshold given: none passed, so that the child uses the model's own (models.json) value
    assert "--model-file /w/x.pt" in file_cmd and "--model " not in file_cmd and "--lesion-threshold" not in file_cmd
    assert python_executable() == sys.executable  # no slicer.app here: this interpreter
    assert not hasattr(slicer, "app")


# ---------------------------------------------------------------- in-process runner


def test_in_process_runner_reuses_its_model_and_runs_without_blocking(setup):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runner = InProcessRunner()
        options = SegmentOptions(model_file=str(setup["ckpt"]), device="cpu", lesion_threshold=0.5)
        assert runner.predictor_for(options) is runner.predictor_for(options)
        volume = volumeFromNode(setup["node"])
        blocking = runner.run(volume, options)
        events = []
        runner.start(volume, options, progress=lambda s, f: events.append((s, f)))
        result, deadline = None, time.monotonic() + 60
        while result is None:
            result = runner.poll(timeout=0.05)
            assert time.monotonic() < deadline
        np.testing.assert_array_equal(result.labelmap.array_zyx, blocking.labelmap.array_zyx)
        assert {s for s, _ in events} >= {"coarse", "fine", "post"} and not runner.is_running

        runner.start(volume, options)
        runner.cancel()  # before the first progress report: the run stops there
        with pytest.raises(CancelledError):
            while runner.poll(timeout=0.05) is None:
                pass
        failing = InProcessRunner()
        with pytest.raises(RunnerError) as info:
            failing.run(volume, SegmentOptions(model_file=str(setup["root"] / "gone.pt")))
        assert info.value.exit_code == 2
    finally:
        torch.set_num_threads(threads)


def test_logic_start_poll_with_the_in_process_runner(setup):
    scene, node = setup["scene"], setup["node"]
    logic = LiverSegLogic(scene, InProcessRunner())
    logic.start(node, modelFile=str(setup["ckpt"]), device="cpu", lesionThreshold=0.5)
    assert logic.isRunning
    with pytest.raises(RuntimeError, match="already running"):
        logic.start(node, modelFile=str(setup["ckpt"]))
    seg, deadline = None, time.monotonic() + 60
    while seg is None:
        seg = logic.poll(timeout=0.05)
        assert time.monotonic() < deadline
    assert seg.GetScene() is scene and seg.GetSegmentation().GetSegmentIdBySegmentName("Liver")
    logic.removeNode(seg)


def test_killing_a_lone_group_leader_is_harmless(setup):
    """cancel() after the child already ended (a race the GUI can hit) must not raise or hang."""
    if os.name == "nt":
        pytest.skip("POSIX process groups")
    import subprocess

    from LiverSegLib.runs.subprocess_runner import _kill_tree

    proc = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    proc.wait()
    _kill_tree(proc)
    assert proc.returncode == 0
