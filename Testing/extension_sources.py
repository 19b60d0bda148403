"""Where the Slicer module's files are, and ``LiverSeg.py`` parsed with ``ast`` (it imports qt and Slicer's GUI
modules, so the tests never import it). Shared by test_extension_cmake.py and test_extension_module.py."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "LiverSeg"
MODULE_PY = MODULE_DIR / "LiverSeg.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "LiverSeg.ui"
ICON = MODULE_DIR / "Resources" / "Icons" / "LiverSeg.png"


def module_tree() -> ast.Module:
    """The syntax tree of ``LiverSeg.py``."""
    return ast.parse(MODULE_PY.read_text(), filename=str(MODULE_PY))


def module_class(name: str) -> ast.ClassDef:
    """The top-level class ``name`` of ``LiverSeg.py`` (fails the test when there is none)."""
    found = [n for n in module_tree().body if isinstance(n, ast.ClassDef) and n.name == name]
    assert found, f"LiverSeg.py has no class {name}"
    return found[0]
