"""Data for demos and tests: real sample CTs fetched with pip (:mod:`.samples`), synthetic phantoms (:mod:`.phantoms`).

Names are resolved lazily so that ``python -m LiverSegLib.data.samples`` runs without importing the module twice,
and importing the package costs nothing until a name is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "CASES",
    "SOURCES",
    "case_info",
    "fetch_source",
    "load_case",
    "shared_data_dir",
    "make_phantom",
    "make_phantom_batch",
]

_HOME = {name: "samples" for name in __all__[:6]} | {"make_phantom": "phantoms", "make_phantom_batch": "phantoms"}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
