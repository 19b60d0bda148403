"""SimpleITK's errors and warnings made into the one-line messages LiverSeg shows (shared by the readers)."""

from __future__ import annotations

import contextlib
import re

import SimpleITK as sitk  # noqa: N813 (the field's universal alias)

__all__ = ["itk_message", "itk_warnings_off"]


def itk_message(exc: RuntimeError) -> str:
    """The first meaningful line of SimpleITK's multi-line error text (no source paths, no object addresses)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("Exception thrown in") and not re.search(r"\.(cxx|h|hxx):\d+", ln)]
    if not lines:
        return "unreadable"
    text = re.sub(r"^(sitk::ERROR|itk::ERROR|ITK ERROR):\s*", "", lines[0], flags=re.IGNORECASE)
    text = re.sub(r"^\w+\(0x[0-9a-fA-F]+\):\s*", "", text)
    if text.endswith(":") and len(lines) > 1:  # "Read: Error reading x:" then a chain whose last line is the cause
        text = re.sub(r"^(\[\w+\]\s*)?\w+:\s*", "", lines[-1])
    return text[:200]


@contextlib.contextmanager
def itk_warnings_off():
    """ITK's warnings (e.g. 'Analyze file is deprecated', GDCM's 'no series') are multi-line stderr text; our
    refusals say what matters in one line."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
