"""A ``sitecustomize`` that makes a child Python look like Slicer's: LiverSeg code may import only the standard
library, what Slicer 5.10 bundles, and what ``Resources/requirements.txt`` installs.

Put the folder holding this file (copied as ``sitecustomize.py``) on ``PYTHONPATH`` and name the importable
top-level modules in ``LIVERSEG_ALLOWED_IMPORTS`` (comma-separated: Slicer's bundled packages, the requirements
and everything they depend on). Every other top-level module is refused to everybody, as if it were not
installed: a dependency that imports an optional package (monai and matplotlib) sees it missing, as in Slicer.
"""

import os
import sys

_ALLOWED = set(filter(None, os.environ.get("LIVERSEG_ALLOWED_IMPORTS", "").split(","))) | set(
    sys.stdlib_module_names) | {"LiverSegLib", "LiverSegSlicer", "sitecustomize", "__main__"}


class _SlicerLikeImports:
    """A meta-path finder that refuses every top-level module a Slicer with LiverSeg's requirements would lack."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        top = name.partition(".")[0]
        if top in _ALLOWED or top.startswith("_") or path is not None:  # private helpers; submodules follow
            return None
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename.startswith("<frozen importlib"):
            frame = frame.f_back
        importer = frame.f_globals.get("__name__", "?") if frame is not None else "?"
        raise ModuleNotFoundError(f"No module named {top!r} (3D Slicer 5.10 does not ship it and "
                                  f"Resources/requirements.txt does not install it; imported by {importer})",
                                  name=top)


sys.meta_path.insert(0, _SlicerLikeImports())
