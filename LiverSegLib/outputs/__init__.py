"""Result outputs: labelmap/table/summary writer, surface meshes (STL/OBJ) and the overview picture.

Names are imported lazily so that, e.g., the Slicer side can use the surfaces without matplotlib installed.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["check_output_dir", "write_case_outputs", "read_case_outputs", "export_surfaces", "labelmap_surface",
           "write_surface", "render_overview"]

_HOME = {
    "check_output_dir": "writer",
    "write_case_outputs": "writer",
    "read_case_outputs": "reader",
    "export_surfaces": "surfaces",
    "labelmap_surface": "surfaces",
    "write_surface": "surfaces",
    "render_overview": "overview",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)


def __dir__() -> list[str]:
    return sorted(__all__)
