"""The use cases of LiverSeg, shared by every front end (CLI, ``demo``, Slicer's logic and console batch).

- :class:`SegmentOptions`: what a run is asked to do (one frozen value; renders itself as CLI arguments).
- :func:`segment_file`: one CT file or DICOM folder -> a result folder.
- :func:`segment_folder`: a folder of cases -> one result folder per case + ``batch_summary.csv`` (resumable).
- :class:`InProcessRunner` / :class:`SubprocessRunner`: volume -> :class:`~LiverSegLib.SegmentationResult`, in this
  process (model reused across calls) or in a child process (never blocks a GUI, cancellable, survives crashes).

The front ends translate their inputs (arguments, keyword arguments, MRML nodes) into these calls and nothing
more; this package never imports a front end.
"""

from __future__ import annotations

import importlib

__all__ = ["SegmentOptions", "segment_file", "segment_folder", "find_cases", "CaseResult", "InProcessRunner",
           "SubprocessRunner", "RunnerError", "EventPump", "as_runner_error", "load_predictor", "python_executable"]

_WHERE = {"SegmentOptions": "options", "segment_file": "segment", "segment_folder": "folder",
          "find_cases": "folder", "CaseResult": "folder", "InProcessRunner": "runners", "RunnerError": "runners",
          "EventPump": "runners", "as_runner_error": "runners", "load_predictor": "runners",
          "SubprocessRunner": "subprocess_runner", "python_executable": "subprocess_runner"}


def __getattr__(name: str):
    """Import on first use: ``liverseg --help`` and option checks stay free of torch, VTK and the image readers."""
    if name in _WHERE:
        return getattr(importlib.import_module(f"LiverSegLib.runs.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'LiverSegLib.runs' has no attribute {name!r}")
