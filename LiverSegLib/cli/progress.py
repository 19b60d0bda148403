"""Progress reporting for the CLI: JSON lines for front ends, a bar on stderr for people, or nothing."""

from __future__ import annotations

import json
import sys
from typing import Any

__all__ = ["make_reporter", "JsonReporter", "BarReporter", "QuietReporter"]

# Share of the whole run each stage takes, so the overall fraction moves steadily.
_WEIGHTS = {"read": 0.05, "coarse": 0.25, "fine": 0.55, "post": 0.05, "write": 0.10}


def _overall(stage: str, fraction: float) -> float:
    done = 0.0
    for name, w in _WEIGHTS.items():
        if name == stage:
            return round(done + w * max(0.0, min(1.0, fraction)), 4)
        done += w
    return round(done, 4)


class JsonReporter:
    """One JSON object per line on stdout: progress events, then ``done`` or ``error``."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stdout
        self._last: tuple[str, float] | None = None

    def _emit(self, payload: dict[str, Any]) -> None:
        self.stream.write(json.dumps(payload, default=str) + "\n")
        self.stream.flush()

    def __call__(self, stage: str, fraction: float) -> None:
        key = (stage, round(fraction, 2))
        if key == self._last:  # no flood of identical lines
            return
        self._last = key
        self._emit({"event": "progress", "stage": stage, "fraction": round(fraction, 4),
                    "overall": _overall(stage, fraction)})

    def done(self, summary: dict[str, Any]) -> None:
        self._emit({"event": "done", **summary})

    def error(self, message: str, code: int) -> None:
        self._emit({"event": "error", "message": message, "exit_code": code})

    def log(self, message: str) -> None:
        self._emit({"event": "log", "message": message})


class BarReporter:
    """A tqdm progress bar on stderr over the whole run.

    The bar is drawn only when stderr is a terminal: redrawn bar text in a log file or a pipe is noise, and the
    CLI's contract is that a failed run writes exactly one line there. Log messages are written either way.
    """

    def __init__(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=100, file=sys.stderr, bar_format="{desc:<8} {percentage:3.0f}%|{bar}| {elapsed}",
                        leave=False, disable=None)  # None: disabled when stderr is not a TTY

    def __call__(self, stage: str, fraction: float) -> None:
        self.bar.set_description_str(stage)
        self.bar.n = int(100 * _overall(stage, fraction))
        self.bar.refresh()

    def done(self, summary: dict[str, Any]) -> None:
        self.bar.close()

    def error(self, message: str, code: int) -> None:
        self.bar.close()

    def log(self, message: str) -> None:
        self.bar.write(message, file=sys.stderr)


class QuietReporter:
    """No progress output."""

    def __call__(self, stage: str, fraction: float) -> None:
        pass

    def done(self, summary: dict[str, Any]) -> None:
        pass

    def error(self, message: str, code: int) -> None:
        pass

    def log(self, message: str) -> None:
        print(message, file=sys.stderr)


def make_reporter(kind: str):
    """``json``, ``bar`` or ``none``."""
    return {"json": JsonReporter, "bar": BarReporter, "none": QuietReporter}[kind]()
