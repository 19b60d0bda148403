"""Runners: what turns a :class:`LiverSegLib.Volume` into a :class:`LiverSegLib.SegmentationResult`.

A runner is any object with ``run(volume, options, progress=None) -> SegmentationResult``, ``options`` being a
:class:`~LiverSegLib.runs.options.SegmentOptions`. Both runners here also offer the non-blocking pair
``start(volume, options, progress=None)`` + ``poll()`` for a GUI timer, and ``cancel()``. Progress callbacks given
to ``start`` are called from ``poll()``, i.e. on the caller's (GUI) thread.

Errors: a failed run raises :class:`RunnerError` (``.message`` one line, ``.exit_code`` 2 for bad input/model,
1 for an internal error, as the CLI's exit codes); a cancelled run raises :class:`LiverSegLib.CancelledError`.

- :class:`InProcessRunner` calls LiverSegLib in this process; the model is loaded once per (model, device) and
  reused across calls, which is what a console batch wants.
- :class:`~LiverSegLib.runs.subprocess_runner.SubprocessRunner` runs the ``liverseg segment`` CLI in a child
  process (Slicer's default: never blocks, survives crashes and out-of-memory kills, cancellable).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from LiverSegLib.errors import CancelledError, InputError, LiverSegError
from LiverSegLib.runs.options import SegmentOptions
from LiverSegLib.types import SegmentationResult, Volume

__all__ = ["RunnerError", "InProcessRunner", "ProgressCallback", "EventPump", "as_runner_error", "load_predictor",
           "run_model"]

ProgressCallback = Callable[[str, float], None]


class RunnerError(LiverSegError):
    """A run failed. ``message`` is one line for the user; ``exit_code`` is 2 for bad input/model, 1 otherwise."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = int(exit_code)

    @property
    def is_input_error(self) -> bool:
        return self.exit_code == 2


def load_predictor(options: SegmentOptions):
    """A :class:`~LiverSegLib.pipeline.predictor.Predictor` for the model, device and runtime ``options`` name (CPU
    threads of torch and the ONNX engines capped at the CPUs this process may use:
    :func:`~LiverSegLib.runs.cpu.configure_torch_threads`)."""
    from LiverSegLib.pipeline.predictor import Predictor
    from LiverSegLib.runs.cpu import configure_torch_threads

    threads = configure_torch_threads()
    engine = {"runtime": options.runtime, "precision": options.precision, "threads": threads}
    if options.model_file:  # a bare checkpoint has no ONNX export: torch runs it
        return Predictor.from_checkpoint(options.model_file, device=options.device, **engine)
    return Predictor(options.model, device=options.device, **engine)


def run_model(predictor, volume: Volume, options: SegmentOptions,
              progress: ProgressCallback | None = None) -> SegmentationResult:
    """The one place where run options reach the model (threshold ``None``: the model's own; quick mode)."""
    return predictor.predict(volume, progress=progress, lesion_threshold=options.lesion_threshold,
                             quick=options.quick)


def as_runner_error(exc: BaseException) -> RunnerError:
    """The :class:`RunnerError` for an exception raised by LiverSegLib (same codes as the CLI)."""
    if isinstance(exc, RunnerError):
        return exc
    text = " ".join(str(exc).split())
    if isinstance(exc, InputError):
        return RunnerError(text, 2)
    if isinstance(exc, LiverSegError):
        return RunnerError(text, 1)
    return RunnerError(f"internal error: {type(exc).__name__}: {text}", 1)


class EventPump:
    """Events from a worker (thread or reader threads) delivered to callbacks on the thread that calls ``pump``."""

    def __init__(self, progress: ProgressCallback | None, log: Callable[[str], None] | None) -> None:
        self.events: queue.Queue = queue.Queue()
        self.progress = progress
        self.log = log

    def pump(self, timeout: float = 0.0) -> None:
        """Deliver queued events, waiting up to ``timeout`` s for the first. A callback's exception propagates."""
        try:
            event = self.events.get(timeout=timeout) if timeout > 0 else self.events.get_nowait()
        except queue.Empty:
            return
        while True:
            kind, payload = event
            if kind == "progress" and self.progress is not None:
                self.progress(*payload)
            elif kind == "log" and self.log is not None:
                self.log(payload)
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return


class InProcessRunner:
    """Runs LiverSegLib in this process, reusing the loaded model across calls.

    Args:
        predictor: a ready :class:`LiverSegLib.Predictor` used when the options name no model; otherwise
            predictors are built on first use and kept per (model, model file, device).
        log: called with each warning of a run.
    """

    def __init__(self, predictor=None, log: Callable[[str], None] | None = None) -> None:
        self.predictor = predictor
        self.log = log
        self._cache: dict[tuple, object] = {}
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._pump: EventPump | None = None
        self._outcome: tuple[SegmentationResult | None, BaseException | None] | None = None

    def predictor_for(self, options: SegmentOptions):
        """The predictor for ``options`` (loaded once, then reused)."""
        if self.predictor is not None and options.model is None and options.model_file is None:
            return self.predictor
        key = (options.model, options.model_file, options.device)
        if key not in self._cache:
            self._cache[key] = load_predictor(options)
        return self._cache[key]

    def run(self, volume: Volume, options: SegmentOptions | None = None,
            progress: ProgressCallback | None = None) -> SegmentationResult:
        """Segment ``volume`` now, in this thread. Raises :class:`RunnerError` or :class:`CancelledError`."""
        self._cancel.clear()
        return self._run(volume, options, progress, self.log)

    def _run(self, volume: Volume, options: SegmentOptions | None, progress: ProgressCallback | None,
             log: Callable[[str], None] | None) -> SegmentationResult:
        options = options or SegmentOptions()

        def report(stage: str, fraction: float) -> None:
            if self._cancel.is_set():
                raise CancelledError("segmentation cancelled")
            if progress is not None:
                progress(stage, fraction)

        try:
            predictor = self.predictor_for(options)
            result = run_model(predictor, volume, options, report)
        except CancelledError:
            raise
        except Exception as exc:
            raise as_runner_error(exc) from exc
        for warning in result.warnings:
            if log is not None:
                log(f"warning: {warning}")
        return result

    # ---------------------------------------------------------------- non-blocking use (GUI timer)
    @property
    def is_running(self) -> bool:
        return self._thread is not None

    def start(self, volume: Volume, options: SegmentOptions | None = None,
              progress: ProgressCallback | None = None) -> None:
        """Start a run in a worker thread; follow it with :meth:`poll`."""
        if self._thread is not None:
            raise RuntimeError("a segmentation is already running")
        pump = EventPump(progress, self.log)
        self._pump, self._outcome = pump, None
        self._cancel.clear()

        def work() -> None:
            try:
                self._outcome = (self._run(volume, options, lambda s, f: pump.events.put(("progress", (s, f))),
                                           lambda message: pump.events.put(("log", message))), None)
            except BaseException as exc:  # handed to poll() on the caller's thread
                self._outcome = (None, exc)

        self._thread = threading.Thread(target=work, name="LiverSegInProcessRun", daemon=True)
        self._thread.start()

    def poll(self, timeout: float = 0.0) -> SegmentationResult | None:
        """``None`` while running; the result when done. Raises what the run raised."""
        if self._thread is None or self._pump is None:
            raise RuntimeError("nothing is running: call start() first")
        try:
            self._pump.pump(timeout)
        except BaseException:
            self.cancel()
            raise
        if self._thread.is_alive():
            return None
        self._thread.join()
        self._pump.pump()
        self._thread = None
        result, error = self._outcome or (None, RunnerError("the run ended without a result", 1))
        if error is not None:
            raise error
        return result

    def cancel(self) -> None:
        """Ask the running segmentation to stop at its next progress report (within a few slices)."""
        self._cancel.set()
