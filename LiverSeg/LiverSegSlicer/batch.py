"""Batch segmentation of a folder of CTs from Slicer's Python console (no scene, no GUI needed).

Every CT file (NIfTI, NRRD, MetaImage) and every DICOM series folder directly inside ``inputFolder`` becomes one
case; each case gets the same files the ``liverseg segment`` CLI writes, in ``outputFolder/<case>/``
(segmentation labelmap in the input's format family, lesions.csv, summary.json, overview.png, optional surfaces).
A case whose ``summary.json`` exists is skipped unless ``overwrite`` (the batch resumes where it stopped); a case
that fails is recorded and the batch goes on. ``outputFolder/batch_summary.csv`` lists every case of the last call.
"""

from __future__ import annotations

import csv
import fnmatch
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from LiverSegLib.errors import CancelledError, InputError

from .runners import InProcessRunner, RunOptions, asRunnerError

__all__ = ["processFolder", "findCases", "CaseResult", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_DICOM_SUFFIXES = {"", ".dcm", ".ima", ".dicom"}


@dataclass
class CaseResult:
    """What happened to one case: ``status`` is "done", "skipped" or "failed" (then ``message``/``exitCode``)."""

    case: str
    input: str
    output: str
    status: str
    message: str = ""
    exitCode: int = 0
    liverVolumeMl: float | None = None
    lesionCount: int | None = None
    seconds: float = 0.0


def _caseName(path: Path) -> str | None:
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def _looksLikeDicomFolder(folder: Path) -> bool:
    return any(f.is_file() and f.suffix.lower() in _DICOM_SUFFIXES and not f.name.startswith(".")
               for f in folder.iterdir())


def findCases(inputFolder, pattern: str | None = None) -> list[tuple[str, Path]]:
    """(case name, path) of every CT file and DICOM series folder in ``inputFolder`` (sorted, not recursive).

    ``pattern`` (fnmatch, e.g. ``"*_ct.nii.gz"``) restricts the files and folders considered.
    """
    folder = Path(inputFolder)
    if not folder.is_dir():
        raise InputError(f"input folder not found: {folder}")
    cases = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or (pattern and not fnmatch.fnmatch(path.name, pattern)):
            continue
        if path.is_file() and _caseName(path) is not None:
            cases.append((_caseName(path), path))
        elif path.is_dir() and _looksLikeDicomFolder(path):
            cases.append((path.name, path))
    names = [name for name, _ in cases]
    duplicates = {name for name in names if names.count(name) > 1}
    return [(f"{name}{''.join(path.suffixes) or '_dicom'}" if name in duplicates else name, path)
            for name, path in cases]


def _writeSummary(outputFolder: Path, results: list[CaseResult]) -> None:
    path = outputFolder / "batch_summary.csv"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(asdict(results[0]) if results else asdict(
                CaseResult("", "", "", ""))))
            writer.writeheader()
            for result in results:
                writer.writerow(asdict(result))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def processFolder(inputFolder, outputFolder, *, pattern: str | None = None, model: str | None = None,
                  modelFile: str | None = None, device: str = "auto", lesionThreshold: float | None = 0.8,
                  quick: bool = False, surfaces: str | None = None, overwrite: bool = False, runner=None,
                  log: Callable[[str], None] | None = print) -> list[CaseResult]:
    """Segment every CT in ``inputFolder`` into ``outputFolder/<case>/``.

    Args:
        inputFolder: folder holding CT files and/or DICOM series folders.
        outputFolder: created if needed; one subfolder per case.
        pattern: fnmatch pattern restricting the inputs (default: all CT files and DICOM folders).
        model / modelFile / device / lesionThreshold / quick: as for ``LiverSegLogic.process``.
        surfaces: also write closed surfaces, "stl" or "obj" (LPS, like the CLI).
        overwrite: redo cases that already have results (default: skip them).
        runner: default :class:`InProcessRunner` (model loaded once for the whole batch); a
            ``SubprocessRunner()`` isolates each case in its own process.
        log: called with one line per case (``None``: silent).

    Returns:
        One :class:`CaseResult` per case, in name order. A ``CancelledError`` (e.g. Ctrl+C) stops the batch.
    """
    from LiverSegLib.io import read_volume
    from LiverSegLib.outputs import write_case_outputs

    cases = findCases(inputFolder, pattern)
    out = Path(outputFolder)
    out.mkdir(parents=True, exist_ok=True)
    runner = runner if runner is not None else InProcessRunner()
    options = RunOptions(model, modelFile, device, lesionThreshold, quick)
    results: list[CaseResult] = []
    for n, (name, path) in enumerate(cases, start=1):
        caseOut = out / name
        record = CaseResult(name, str(path), str(caseOut), "done")
        t0 = time.perf_counter()
        if (caseOut / "summary.json").is_file() and not overwrite:
            record.status, record.message = "skipped", "results exist (pass overwrite=True to redo)"
        else:
            try:
                volume = read_volume(path)
                result = runner.run(volume, options)
                extra = {"input": {"path": str(path.resolve()), "format": volume.metadata.get("format"),
                                   "size_xyz": list(volume.shape_xyz), "spacing_xyz": list(volume.spacing_xyz)}}
                write_case_outputs(result, volume, caseOut, surfaces=surfaces, overwrite=overwrite,
                                   extra_summary=extra)
                record.liverVolumeMl, record.lesionCount = round(result.liver_volume_ml, 3), len(result.lesions)
            except (CancelledError, KeyboardInterrupt):
                raise
            except Exception as exc:
                error = asRunnerError(exc)
                record.status, record.message, record.exitCode = "failed", error.message, error.exitCode
        record.seconds = round(time.perf_counter() - t0, 2)
        results.append(record)
        if log is not None:
            detail = (f"liver {record.liverVolumeMl:.1f} mL, {record.lesionCount} lesion(s)" if record.status == "done"
                      else record.message)
            log(f"[{n}/{len(cases)}] {name}: {record.status} ({detail}, {record.seconds:.1f} s)")
    _writeSummary(out, results)
    return results
