"""DICOM series folders: which series a folder holds, choosing one, and reading it as a volume.

GDCM (through SimpleITK) groups the files into series and sorts each by slice position along the slice normal. A
folder with several series is refused with one line listing them unless one is chosen (``--series``): reading "the
largest" silently could segment a scout or a dose report. A series with missing slices or uneven spacing is
refused too: a volume resampled from it would put every slice past the gap at the wrong position.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk  # noqa: N813

from LiverSegLib.errors import InputError
from LiverSegLib.io._itk import itk_message, itk_warnings_off

__all__ = ["SeriesInfo", "list_series", "read_dicom_folder", "UNEVEN_TOLERANCE"]

#: Largest deviation of a gap between slices from the series' spacing, as a fraction of that spacing, that is
#: still accepted as rounding of the positions (ITK measures it while reading).
UNEVEN_TOLERANCE = 0.05

_TAGS = {"0020|000d": "study_instance_uid", "0010|0020": "patient_id", "0008|0060": "modality",
         "0008|103e": "series_description", "0020|0011": "series_number", "0020|0052": "frame_of_reference_uid"}


@dataclass(frozen=True)
class SeriesInfo:
    """One series of a folder: its UID, its files in slice order, and what its first header says."""

    uid: str
    files: tuple[str, ...]
    modality: str = ""
    description: str = ""

    def line(self) -> str:
        what = " ".join(filter(None, (self.modality, repr(self.description) if self.description else "")))
        return f"{self.uid} ({what + ', ' if what else ''}{len(self.files)} files)"


def _header(path: str) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    return reader


def _tag(reader: sitk.ImageFileReader, tag: str) -> str:
    return reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else ""


def list_series(folder: str | Path) -> list[SeriesInfo]:
    """The DICOM series directly in ``folder`` (GDCM's grouping), largest first; empty when there are none."""
    folder = str(folder)
    with itk_warnings_off():  # GDCM warns in many lines when a folder holds no series; callers say it in one
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
        out = []
        for uid in ids:
            files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid))
            try:
                first = _header(files[0])
                modality, description = _tag(first, "0008|0060"), _tag(first, "0008|103e")
            except RuntimeError:
                modality, description = "", ""
            out.append(SeriesInfo(uid, files, modality, description))
    return sorted(out, key=lambda s: -len(s.files))


def choose_series(folder: Path, series_uid: str | None, series: list[SeriesInfo]) -> SeriesInfo:
    """The series to read: the only one, or the one ``series_uid`` names (a one-line error otherwise)."""
    if not series:
        if not any(folder.iterdir()):
            raise InputError(f"input folder is empty: {folder}")
        raise InputError(f"no DICOM series found in {folder} (pass the folder that directly holds the CT's "
                         "DICOM files, or an image file)")
    if series_uid is not None:
        chosen = [s for s in series if s.uid == series_uid]
        if not chosen:
            raise InputError(f"series {series_uid} is not in {folder}; it holds: "
                             f"{'; '.join(s.line() for s in series)}")
        return chosen[0]
    if len(series) > 1:
        raise InputError(f"{folder} holds {len(series)} DICOM series: {'; '.join(s.line() for s in series)}; "
                         "choose one with --series UID")
    return series[0]


def read_dicom_folder(folder: Path, series_uid: str | None = None,
                      check_kind: Callable[..., None] | None = None) -> tuple[sitk.Image, dict[str, Any]]:
    """The chosen series of ``folder`` as an image, with its identifying tags and files (slice order) as metadata.

    ``check_kind(folder, dimension, size, pixel_id, components)`` sees the first header before the voxels are read
    (the reader's refusal of 2D/RGB/absurd sizes, without reading a whole series first).

    Raises:
        InputError: no series, several series and none chosen, an unknown series, unreadable files, or missing
            slices / uneven spacing.
    """
    info = choose_series(folder, series_uid, list_series(folder))
    try:
        first = _header(info.files[0])
    except RuntimeError as exc:
        raise InputError(f"cannot read DICOM series in {folder}: {itk_message(exc)}") from None
    metadata: dict[str, Any] = {"format": "dicom", "path": str(folder), "series_instance_uid": info.uid,
                                "file_count": len(info.files), "dicom_files": list(info.files)}
    for tag, key in _TAGS.items():
        if _tag(first, tag):
            metadata[key] = _tag(first, tag)
    if check_kind is not None:
        check_kind(folder, 3, (*first.GetSize()[:2], len(info.files)), first.GetPixelID(),
                   first.GetNumberOfComponents())
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(info.files))
    reader.MetaDataDictionaryArrayUpdateOn()  # each slice's header: its position, for the spacing check
    with itk_warnings_off():
        try:
            image = reader.Execute()
        except RuntimeError as exc:
            raise InputError(f"cannot read DICOM series in {folder}: {itk_message(exc)}") from None
    deviation = _spacing_deviation(reader, image)
    spacing = image.GetSpacing()[2]
    if deviation > UNEVEN_TOLERANCE * spacing:
        raise InputError(f"DICOM series {info.uid} in {folder} has missing slices or uneven slice spacing (a gap "
                         f"differs from the {spacing:.3g} mm spacing by {deviation:.3g} mm); export the complete "
                         "series")
    return image, metadata


def _spacing_deviation(reader: sitk.ImageSeriesReader, image: sitk.Image) -> float:
    """Largest difference (mm) between a gap of consecutive slice positions along the normal and the volume's
    slice spacing (0 for a single slice or slices without positions)."""
    normal = np.asarray(image.GetDirection(), float).reshape(3, 3)[:, 2]
    positions = []
    for i in range(len(reader.GetFileNames())):
        if not reader.HasMetaDataKey(i, "0020|0032"):
            return 0.0
        try:
            positions.append(float(np.dot([float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")], normal)))
        except ValueError:
            return 0.0
    if len(positions) < 2:
        return 0.0
    gaps = np.abs(np.diff(positions))
    return float(np.max(np.abs(gaps - image.GetSpacing()[2])))
