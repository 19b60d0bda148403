"""Read one case's results (what :func:`~LiverSegLib.outputs.writer.write_case_outputs` wrote) back into memory.

Used by front ends that run ``liverseg segment`` in a child process (the Slicer extension's subprocess runner) and by
anyone who wants a :class:`SegmentationResult` from an earlier run's folder.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from LiverSegLib.config import default_labels
from LiverSegLib.errors import InputError
from LiverSegLib.io.image_io import read_volume
from LiverSegLib.types import LabelInfo, LesionRecord, SegmentationResult

__all__ = ["read_case_outputs"]

_GREY = (0.5, 0.5, 0.5)


def _labels(entries: list[dict[str, Any]]) -> list[LabelInfo]:
    """The label table from summary.json; colour/terminology from the entry, else from the standard table by value."""
    standard = {lb.value: lb for lb in default_labels()}
    labels = []
    for entry in entries:
        value, name = int(entry["value"]), str(entry["name"])
        known = standard.get(value)
        same = known is not None and known.name == name
        color = entry.get("color_rgb") or (known.color_rgb if same else _GREY)
        terminology = entry.get("terminology") or (known.terminology if same else {})
        labels.append(LabelInfo(value, name, tuple(float(c) for c in color), dict(terminology)))
    return labels


def _lesions(path: Path) -> list[LesionRecord]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [LesionRecord.from_row(row) for row in rows]


def _segmentation_file(folder: Path, summary: dict[str, Any]) -> Path:
    names = [n for n in summary.get("outputs", []) if Path(n).name.startswith("segmentation")]
    names += sorted(p.name for p in folder.glob("segmentation.*"))
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise InputError(f"{folder} holds no segmentation file (segmentation.nii.gz/.nrrd/.mha): incomplete results")


def read_case_outputs(outdir: str | os.PathLike) -> SegmentationResult:
    """A :class:`SegmentationResult` from a results folder (summary.json, lesions.csv, segmentation file).

    The labelmap keeps the geometry stored in the file (the CT's grid, LPS). Lesion values are those of
    lesions.csv (rounded as written there). Labels get their colour and terminology from summary.json when it
    carries them, otherwise from LiverSeg's standard label table when value and name match it.

    Raises:
        InputError: the folder or one of the files is missing or unreadable.
    """
    folder = Path(outdir)
    summary_path = folder / "summary.json"
    if not summary_path.is_file():
        raise InputError(f"{folder} holds no summary.json: not a LiverSeg results folder (or an incomplete one)")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        lesions = _lesions(folder / "lesions.csv") if (folder / "lesions.csv").is_file() else []
        labels = _labels(summary.get("labels", []))
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"cannot read results in {folder}: {type(exc).__name__}: {exc}") from None
    labelmap = read_volume(_segmentation_file(folder, summary))
    model = summary.get("model", {})
    return SegmentationResult(
        labelmap=labelmap,
        labels=labels,
        lesions=lesions,
        liver_volume_ml=float(summary.get("liver_volume_ml", 0.0)),
        lesion_volume_ml=float(summary.get("lesion_volume_ml", 0.0)),
        model_id=str(model.get("id", "")),
        model_version=str(model.get("version", "")),
        timings_s={k: float(v) for k, v in summary.get("timings_s", {}).items()},
        warnings=[str(w) for w in summary.get("warnings", [])],
        details=dict(summary.get("details", {})),
    )
