"""Where LiverSeg keeps its resources and its cache."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["resources_dir", "home_dir"]


def resources_dir() -> Path:
    """The ``Resources`` folder beside the package (repository root, or the Slicer extension's install)."""
    return Path(__file__).resolve().parent.parent / "Resources"


def home_dir() -> Path:
    """LiverSeg's cache folder: ``$LIVERSEG_HOME`` or ``~/.liverseg`` (user catalogue, samples)."""
    return Path(os.environ.get("LIVERSEG_HOME") or Path.home() / ".liverseg")
