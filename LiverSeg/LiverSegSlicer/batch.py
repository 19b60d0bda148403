"""Batch segmentation of a folder of CTs from Slicer's Python console: Slicer's spelling of
:func:`LiverSegLib.runs.segment_folder` (no scene, no GUI needed).

Every CT file (NIfTI, NRRD, MetaImage) and every DICOM series folder directly inside ``inputFolder`` becomes one
case with the files ``liverseg segment`` writes, in ``outputFolder/<case>/``; cases with results are skipped
unless ``overwrite`` (the batch resumes), a failing case is recorded and the batch goes on;
``outputFolder/batch_summary.csv`` lists every case. The same batch runs from a shell with
``liverseg segment --batch INPUT_FOLDER -o OUTPUT_FOLDER``.
"""

from __future__ import annotations

from collections.abc import Callable

from LiverSegLib.runs.folder import CaseResult, find_cases
from LiverSegLib.runs.options import SegmentOptions

__all__ = ["processFolder", "findCases", "CaseResult"]


def findCases(inputFolder, pattern: str | None = None):
    """(case name, path) of every CT file and DICOM series folder in ``inputFolder``; see
    :func:`LiverSegLib.runs.find_cases`."""
    return find_cases(inputFolder, pattern)


def processFolder(inputFolder, outputFolder, *, pattern: str | None = None, model: str | None = None,
                  modelFile: str | None = None, device: str = "auto", lesionThreshold: float | None = None,
                  quick: bool = False, surfaces: str | None = None, overwrite: bool = False, runner=None,
                  log: Callable[[str], None] | None = print) -> list[CaseResult]:
    """Segment every CT in ``inputFolder`` into ``outputFolder/<case>/``.

    Args:
        inputFolder: folder holding CT files and/or DICOM series folders.
        outputFolder: created if needed; one subfolder per case.
        pattern: fnmatch pattern restricting the inputs (default: all CT files and DICOM folders).
        model / modelFile / device / lesionThreshold / quick: as for ``LiverSegLogic.process``
            (``lesionThreshold=None``: the model's own value).
        surfaces: also write closed surfaces, "stl" or "obj" (LPS, like the CLI).
        overwrite: redo cases that already have results (default: skip them).
        runner: ``None`` runs in this process with the model loaded once; a ``SubprocessRunner()`` isolates each
            case in its own process.
        log: called with one line per case (``None``: silent).

    Returns:
        One :class:`LiverSegLib.runs.CaseResult` per case, in name order.
    """
    from LiverSegLib.runs.folder import segment_folder

    options = SegmentOptions(model=model, model_file=modelFile, device=device, lesion_threshold=lesionThreshold,
                             quick=quick, surfaces=surfaces, overwrite=overwrite)
    return segment_folder(inputFolder, outputFolder, options, pattern=pattern, runner=runner, log=log)
