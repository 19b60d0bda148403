"""Segment a folder of cases: one result folder per case plus ``batch_summary.csv``; resumable.

Every CT file (NIfTI, NRRD, MetaImage) and every DICOM series folder directly inside the input folder is a case;
``output/<case>/`` gets exactly what :func:`~LiverSegLib.runs.segment.segment_file` writes. A case whose results
exist is skipped unless ``options.overwrite`` (so a stopped batch resumes where it stopped); a case that fails is
recorded with its one-line message and the batch goes on. The model is loaded once for the whole batch.
"""

from __future__ import annotations

import csv
import fnmatch
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from LiverSegLib.errors import CancelledError, InputError
from LiverSegLib.runs.options import SegmentOptions

__all__ = ["CaseResult", "find_cases", "segment_folder", "IMAGE_SUFFIXES", "BATCH_SUMMARY"]

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_DICOM_SUFFIXES = {"", ".dcm", ".ima", ".dicom"}
#: The batch's table of cases, written (atomically) into the output folder after every case.
BATCH_SUMMARY = "batch_summary.csv"


@dataclass
class CaseResult:
    """What happened to one case: ``status`` is "done", "skipped" or "failed" (then ``message``/``exit_code``)."""

    case: str
    input: str
    output: str
    status: str
    message: str = ""
    exit_code: int = 0
    liver_volume_ml: float | None = None
    lesion_count: int | None = None
    seconds: float = 0.0


def _case_name(path: Path) -> str | None:
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def _looks_like_dicom_folder(folder: Path) -> bool:
    return any(f.is_file() and f.suffix.lower() in _DICOM_SUFFIXES and not f.name.startswith(".")
               for f in folder.iterdir())


def find_cases(input_folder: str | os.PathLike, pattern: str | None = None) -> list[tuple[str, Path]]:
    """(case name, path) of every CT file and DICOM series folder in ``input_folder`` (sorted, not recursive).

    ``pattern`` (fnmatch, e.g. ``"*_ct.nii.gz"``) restricts the files and folders considered. Two inputs with the
    same stem (``a.nii.gz`` and ``a.nrrd``) keep their suffix in the case name.
    """
    folder = Path(input_folder)
    if not folder.is_dir():
        raise InputError(f"input folder not found: {folder}")
    cases = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or (pattern and not fnmatch.fnmatch(path.name, pattern)):
            continue
        if path.is_file() and _case_name(path) is not None:
            cases.append((_case_name(path), path))
        elif path.is_dir() and _looks_like_dicom_folder(path):
            cases.append((path.name, path))
    names = [name for name, _ in cases]
    duplicates = {name for name in names if names.count(name) > 1}
    return [(f"{name}{''.join(path.suffixes) or '_dicom'}" if name in duplicates else name, path)
            for name, path in cases]


def _write_summary(output_folder: Path, results: list[CaseResult]) -> None:
    path = output_folder / BATCH_SUMMARY
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=[f.name for f in fields(CaseResult)])
            writer.writeheader()
            for result in results:
                writer.writerow(asdict(result))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def segment_folder(input_folder: str | os.PathLike, output_folder: str | os.PathLike,
                   options: SegmentOptions | None = None, *, pattern: str | None = None, runner=None,
                   log: Callable[[str], None] | None = print) -> list[CaseResult]:
    """Segment every case in ``input_folder`` into ``output_folder/<case>/``.

    Args:
        input_folder: folder holding CT files and/or DICOM series folders.
        output_folder: created if needed; one subfolder per case and ``batch_summary.csv``.
        options: the run's options; ``overwrite`` redoes cases that have results (default: skip them).
        pattern: fnmatch pattern restricting the inputs.
        runner: ``None`` runs in this process with the model loaded once; a
            :class:`~LiverSegLib.runs.subprocess_runner.SubprocessRunner` isolates each case in its own process.
        log: called with one line per case (``None``: silent).

    Returns:
        One :class:`CaseResult` per case, in name order. Cancelling (``CancelledError``, Ctrl+C) stops the batch;
        the summary then lists the cases finished so far.
    """
    from LiverSegLib.runs.runners import as_runner_error, load_predictor
    from LiverSegLib.runs.segment import check_model_choice, segment_file

    options = options or SegmentOptions()
    cases = find_cases(input_folder, pattern)
    out = Path(output_folder)
    if out.exists() and not out.is_dir():
        raise InputError(f"output path {out} is a file, not a folder")
    if runner is None:
        check_model_choice(options)  # a wrong model fails the batch once, not every case
    out.mkdir(parents=True, exist_ok=True)
    predictor = None
    results: list[CaseResult] = []
    try:
        for n, (name, path) in enumerate(cases, start=1):
            case_out = out / name
            record = CaseResult(name, str(path), str(case_out), "done")
            t0 = time.perf_counter()
            if (case_out / "summary.json").is_file() and not options.overwrite:
                record.status, record.message = "skipped", "results exist (overwrite to redo)"
            else:
                try:
                    if runner is None and predictor is None:
                        predictor = load_predictor(options)
                    summary = segment_file(path, case_out, options, predictor=predictor, runner=runner)
                    record.liver_volume_ml = summary["liver_volume_ml"]
                    record.lesion_count = summary["lesion_count"]
                except (CancelledError, KeyboardInterrupt):
                    raise
                except Exception as exc:
                    error = as_runner_error(exc)
                    record.status, record.message, record.exit_code = "failed", error.message, error.exit_code
            record.seconds = round(time.perf_counter() - t0, 2)
            results.append(record)
            if log is not None:
                detail = (f"liver {record.liver_volume_ml:.1f} mL, {record.lesion_count} lesion(s)"
                          if record.status == "done" else record.message)
                log(f"[{n}/{len(cases)}] {name}: {record.status} ({detail}, {record.seconds:.1f} s)")
    finally:
        _write_summary(out, results)
    return results
