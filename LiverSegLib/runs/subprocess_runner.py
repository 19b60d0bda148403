"""Run ``python -m LiverSegLib segment --progress json`` in a child process (the GUI's default runner).

The volume goes to the child as an uncompressed NRRD in a private temporary folder and the results come back
through the CLI's output folder (:func:`LiverSegLib.outputs.reader.read_case_outputs`); the folder is removed
afterwards whatever happened. The child starts in its own session (POSIX) or process group (Windows) so that
:meth:`SubprocessRunner.cancel` kills it together with anything it started. Reader threads turn its JSON lines
into events; :meth:`SubprocessRunner.poll` delivers them on the caller's thread.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from LiverSegLib.errors import CancelledError
from LiverSegLib.runs.options import SegmentOptions
from LiverSegLib.runs.runners import EventPump, ProgressCallback, RunnerError, as_runner_error
from LiverSegLib.types import SegmentationResult, Volume

__all__ = ["SubprocessRunner", "python_executable"]


def python_executable() -> str:
    """PythonSlicer inside Slicer (the interpreter with Slicer's packages), else this interpreter."""
    slicer = sys.modules.get("slicer")
    app = getattr(slicer, "app", None) if slicer is not None else None
    if app is not None:
        name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
        candidates = [shutil.which(name), str(Path(app.slicerHome) / "bin" / name)]
        for candidate in candidates:
            if candidate and Path(candidate).is_file():
                return candidate
    return sys.executable


def _library_path() -> str:
    """The folder holding the LiverSegLib package, so that the child imports the same library as this process."""
    import LiverSegLib

    return str(Path(LiverSegLib.__file__).resolve().parent.parent)


def _base_environment() -> dict[str, str]:
    """Slicer's startup environment inside Slicer (what ``slicer.util.launchConsoleProcess`` gives a child: the
    PythonSlicer launcher then sets up its own paths), this process's environment elsewhere."""
    slicer = sys.modules.get("slicer")
    util = getattr(slicer, "util", None) if slicer is not None else None
    if getattr(slicer, "app", None) is not None and hasattr(util, "startupEnvironment"):
        try:
            return dict(util.startupEnvironment())
        except Exception:  # noqa: BLE001 - an old Slicer without it: the current environment still works
            pass
    return dict(os.environ)


def _start_options() -> dict:
    """Popen options: a process group of its own (so that cancel kills the whole tree) and, on Windows, no console
    window flashing up (``launchConsoleProcess`` hides it the same way)."""
    if os.name != "nt":
        return {"start_new_session": True}
    info = subprocess.STARTUPINFO()
    info.dwFlags |= subprocess.STARTF_USESHOWWINDOW
    info.wShowWindow = 0  # SW_HIDE
    return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW, "startupinfo": info}


def _kill_tree(proc: subprocess.Popen) -> None:
    """Kill the child and every process of its group/session; wait until the child is gone."""
    if proc.poll() is None or os.name != "nt":
        if os.name == "nt":
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)], capture_output=True, check=False)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # the child leads its own session: pgid == pid
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


class _Job:
    """One child process, its temporary folder and what its output said."""

    def __init__(self, proc: subprocess.Popen, folder: Path, pump: EventPump) -> None:
        self.proc, self.folder, self.pump = proc, folder, pump
        self.cancelled = False
        self.done: dict | None = None
        self.error: tuple[str, int] | None = None
        self.stderr: collections.deque[str] = collections.deque(maxlen=20)
        self.readers = [threading.Thread(target=self._read_stdout, daemon=True),
                        threading.Thread(target=self._read_stderr, daemon=True)]
        for reader in self.readers:
            reader.start()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
                kind = event.get("event")
            except (ValueError, AttributeError):
                if line.strip():
                    self.pump.events.put(("log", line.rstrip()))
                continue
            if kind == "progress":
                self.pump.events.put(("progress", (str(event.get("stage", "")), float(event.get("fraction", 0.0)))))
            elif kind == "log":
                self.pump.events.put(("log", str(event.get("message", ""))))
            elif kind == "done":
                self.done = event
            elif kind == "error":
                self.error = (str(event.get("message", "")), int(event.get("exit_code", 1)))

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            if line.strip():
                self.stderr.append(line.rstrip())

    def finished(self) -> bool:
        return self.proc.poll() is not None and not any(reader.is_alive() for reader in self.readers)

    def failure(self) -> RunnerError:
        code = self.proc.returncode
        if self.error is not None:
            return RunnerError(self.error[0], self.error[1] if self.error[1] in (1, 2) else 1)
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            return RunnerError(f"the segmentation process was killed ({name}); if this repeats, the computer may "
                               "be out of memory: try quick mode or close other programs", 1)
        last = self.stderr[-1].removeprefix("liverseg: error: ") if self.stderr else f"exit code {code}"
        return RunnerError(last, 2 if code == 2 else 1)

    def cleanup(self) -> None:
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        shutil.rmtree(self.folder, ignore_errors=True)


class SubprocessRunner:
    """Runs the LiverSeg CLI in a child process.

    Args:
        python: interpreter for the child (default: PythonSlicer inside Slicer, else this interpreter).
        env: extra environment variables for the child (e.g. ``{"OMP_NUM_THREADS": "1"}``).
        log: called with the CLI's log lines (warnings) and any stray output.
    """

    def __init__(self, python: str | None = None, env: dict[str, str] | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.python = python
        self.env = dict(env or {})
        self.log = log
        self._job: _Job | None = None

    def command(self, input_path: Path, output_folder: Path, options: SegmentOptions) -> list[str]:
        """The child's command line: ``liverseg segment`` with ``options`` rendered by the options themselves.

        The child writes into a private temporary folder and the results come back as a
        :class:`SegmentationResult`: ``--overwrite``, ``--surfaces`` and the overview picture (matplotlib, which
        Slicer does not ship) are left out.
        """
        child = replace(options, overwrite=False, surfaces=None, overview=False)
        return [self.python or python_executable(), "-m", "LiverSegLib", "segment", str(input_path), "-o",
                str(output_folder), "--progress", "json", *child.cli_args()]

    def _environment(self) -> dict[str, str]:
        env = {**_base_environment(), **self.env, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_library_path(), env.get("PYTHONPATH", "")) if p)
        return env

    @property
    def is_running(self) -> bool:
        return self._job is not None

    @property
    def work_folder(self) -> Path | None:
        """The running job's temporary folder (``input.nrrd``, ``output/``); removed when the job ends."""
        return self._job.folder if self._job is not None else None

    @property
    def pid(self) -> int | None:
        """Process id of the running child (its process group id too, on POSIX)."""
        return self._job.proc.pid if self._job is not None else None

    def start(self, volume: Volume, options: SegmentOptions | None = None,
              progress: ProgressCallback | None = None) -> None:
        """Write the volume to a temporary NRRD and start the child; follow it with :meth:`poll`."""
        if self._job is not None:
            raise RuntimeError("a segmentation is already running")
        from LiverSegLib.io import write_volume

        options = options or SegmentOptions()
        folder = Path(tempfile.mkdtemp(prefix="liverseg-run-"))
        try:
            input_path = write_volume(Volume(volume.array_zyx, volume.spacing_xyz, volume.origin_xyz,
                                            volume.direction), folder / "input.nrrd", compress=False)
            proc = subprocess.Popen(self.command(input_path, folder / "output", options), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                                    errors="replace", env=self._environment(), cwd=folder, **_start_options())
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self._job = _Job(proc, folder, EventPump(progress, self.log))

    def poll(self, timeout: float = 0.0) -> SegmentationResult | None:
        """``None`` while the child runs; the result once it succeeded.

        Raises:
            RunnerError: the child failed (its one-line message and exit code).
            CancelledError: :meth:`cancel` was called, or a progress callback raised it.
        """
        job = self._job
        if job is None:
            raise RuntimeError("nothing is running: call start() first")
        try:
            job.pump.pump(timeout)
        except BaseException:  # a progress callback raised (CancelledError to cancel): stop the child first
            self.cancel()
            self._finish_quietly(job)
            raise
        if not job.finished():
            return None
        job.pump.pump()
        return self._finish(job)

    def _finish(self, job: _Job) -> SegmentationResult | None:
        self._job = None
        try:
            if job.cancelled:
                raise CancelledError("segmentation cancelled")
            if job.proc.returncode != 0 or job.done is None:
                raise job.failure()
            from LiverSegLib.outputs.reader import read_case_outputs

            try:
                return read_case_outputs(job.folder / "output")
            except Exception as exc:  # e.g. results removed by a cleaner: still one RunnerError for the caller
                raise as_runner_error(exc) from exc
        finally:
            job.cleanup()

    def run(self, volume: Volume, options: SegmentOptions | None = None,
            progress: ProgressCallback | None = None) -> SegmentationResult:
        """Run to the end (blocking). A progress callback may raise :class:`CancelledError` to cancel."""
        self.start(volume, options, progress)
        try:
            while True:
                result = self.poll(timeout=0.1)
                if result is not None:
                    return result
        except BaseException:
            job = self._job
            if job is not None:  # e.g. KeyboardInterrupt while waiting
                self.cancel()
                self._finish_quietly(job)
            raise

    def _finish_quietly(self, job: _Job) -> None:
        self._job = None
        job.cleanup()

    def cancel(self) -> None:
        """Kill the child and its process tree now; the next :meth:`poll` raises :class:`CancelledError`."""
        job = self._job
        if job is None:
            return
        job.cancelled = True
        _kill_tree(job.proc)
        deadline = time.monotonic() + 5.0
        for reader in job.readers:
            reader.join(max(0.0, deadline - time.monotonic()))
