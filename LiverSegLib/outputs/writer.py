"""Write one case's results (labelmap, lesion table, summary, overview, surfaces) into a folder, atomically.

Everything is written into a hidden temporary folder beside the output folder (same file system) and then
renamed into place, so an interrupted or failed run leaves either the previous results or the complete new ones,
never a mixture.
"""

from __future__ import annotations

import csv
import ctypes
import errno
import json
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from LiverSegLib.config import SURFACE_FORMATS
from LiverSegLib.errors import InputError, OutputExistsError
from LiverSegLib.io.image_io import output_extension_for, write_volume
from LiverSegLib.types import LesionRecord, SegmentationResult, Volume

__all__ = ["PRODUCER", "check_output_dir", "write_case_outputs"]

# The CSV header comes from LesionRecord itself so that the columns can never drift from the rows.
_LESION_COLUMNS = LesionRecord.columns()


#: The ``producer`` entry of every summary.json this writer makes: what marks a folder as LiverSeg results.
PRODUCER = "LiverSeg"


def _our_files(out: Path) -> set[str] | None:
    """The files (relative POSIX paths) a LiverSeg run wrote into ``out``, from its summary.json.

    ``None`` when ``out`` holds no readable LiverSeg summary. A summary names its producer (``"producer":
    {"name": "LiverSeg"}``); summaries written before that key existed are recognised by their ``model`` and
    ``outputs`` entries.
    """
    try:
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or not isinstance(summary.get("outputs"), list):
        return None
    producer = summary.get("producer")
    ours = (isinstance(producer, dict) and producer.get("name") == PRODUCER) or (
        producer is None and isinstance(summary.get("model"), dict) and "id" in summary["model"])
    # .summary.json.tmp: the write-time update of a run killed at that instant (see cli.segment_cmd)
    return {str(p) for p in summary["outputs"]} | {"summary.json", ".summary.json.tmp"} if ours else None


def _listing(paths: list[str], limit: int = 3) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def check_output_dir(outdir: str | os.PathLike, overwrite: bool) -> None:
    """Fail early, before any computation, when results cannot be written to ``outdir``.

    A new or empty folder is always fine. A folder holding the results of an earlier LiverSeg run (its
    summary.json names LiverSeg and lists every file in the folder) may be replaced with ``overwrite``. A folder
    holding any file LiverSeg did not write is refused even with ``overwrite``: replacing it would delete the
    user's files.

    Args:
        outdir: the case's output folder.
        overwrite: whether existing LiverSeg results may be replaced.

    Raises:
        InputError: ``outdir`` exists and is a file.
        OutputExistsError: ``outdir`` holds files LiverSeg did not write, or results and ``overwrite`` is False.
    """
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise InputError(f"output path {out} is a file, not a folder (choose a folder path for -o)")
    if not out.is_dir():
        return
    present = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if not p.is_dir())
    if not present:
        return
    ours = _our_files(out)
    if ours is None:
        raise OutputExistsError(f"output folder {out} holds files that are not LiverSeg results "
                                f"({_listing(present)}); choose a new or empty folder (nothing was changed)")
    foreign = [p for p in present if p not in ours]
    if foreign:
        raise OutputExistsError(f"output folder {out} holds LiverSeg results and files LiverSeg did not write "
                                f"({_listing(foreign)}); move those files or choose another folder (nothing was "
                                "changed)")
    if not overwrite:
        raise OutputExistsError(f"output folder {out} already holds LiverSeg results (summary.json ...); pass "
                                "--overwrite to replace them or choose another folder")


def _json_default(value: Any) -> Any:
    """JSON for the numpy scalars/arrays and paths that ``details`` may carry."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _write_lesions_csv(result: SegmentationResult, path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=_LESION_COLUMNS)
        writer.writeheader()
        for lesion in result.lesions:
            writer.writerow(lesion.as_row())


def _write_all(result: SegmentationResult, ct: Volume, tmp: Path, surfaces: str | None,
               extra_summary: dict | None, overview: bool = True, dicom=None) -> dict[str, Any]:
    """Write every output into ``tmp``; returns the file names relative to the folder by key."""
    names: dict[str, Any] = {}
    labelmap = result.labelmap
    seg = Volume(np.asarray(labelmap.array_zyx, dtype=np.uint8), labelmap.spacing_xyz, labelmap.origin_xyz,
                 labelmap.direction)
    names["segmentation"] = f"segmentation{output_extension_for(ct)}"
    write_volume(seg, tmp / names["segmentation"])
    names["lesions"] = "lesions.csv"
    _write_lesions_csv(result, tmp / names["lesions"])
    if overview:
        # matplotlib only here: Slicer does not ship it, and its runner asks for no picture
        from LiverSegLib.outputs.overview import render_overview

        names["overview"] = "overview.png"
        render_overview(ct, seg, tmp / names["overview"], title=Path(str(ct.metadata.get("path", ""))).name,
                        liver_volume_ml=result.liver_volume_ml, lesion_count=len(result.lesions))
    from LiverSegLib import __version__

    summary = {"producer": {"name": PRODUCER, "version": __version__}, **result.summary(), **(extra_summary or {})}
    if surfaces is not None:
        from LiverSegLib.outputs.surfaces import export_surfaces  # VTK: only when surfaces are asked for

        files = export_surfaces(seg, tmp / "surfaces", result.labels, surfaces)
        names["surfaces"] = [f"surfaces/{p.name}" for p in files]
        summary["surfaces"] = {"coordinate_system": "LPS", "units": "mm", "files": names["surfaces"]}
    if dicom is not None:
        from LiverSegLib.outputs.dicom_export import write_dicom_outputs  # highdicom: only for DICOM outputs

        dicom_names, summary["dicom"] = write_dicom_outputs(result, ct, tmp, dicom)
        names.update(dicom_names)
    names["summary"] = "summary.json"
    lists = ("surfaces", "ct_dicom")
    summary["outputs"] = sorted([v for k, v in names.items() if k not in lists] +
                                [v for k in lists for v in names.get(k, [])])
    with open(tmp / names["summary"], "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2, default=_json_default)
        fh.write("\n")
    return names


def _unique_dir(parent: Path, prefix: str, create: bool = True) -> Path:
    """A new hidden folder (or just a free name) in ``parent``.

    ``os.mkdir`` honours the umask, unlike ``tempfile.mkdtemp`` (0700), so the results folder that this temporary
    folder becomes has the permissions the user expects.
    """
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(6)}"
        if not create and not path.exists():
            return path
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {parent}")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system or
    the file system cannot, so that the caller falls back to two renames."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out`` so that ``out`` always holds either the old results or the new ones.

    An absent or empty ``out`` is replaced by one rename. Existing results are swapped with ``tmp`` in one atomic
    step where the system can (Linux; the old results, then in ``tmp``, are removed afterwards); elsewhere ``out`` is
    first renamed to a backup that is removed only afterwards (a kill between those two renames leaves the old
    results in the hidden backup folder).
    """
    try:
        os.rename(tmp, out)
        return
    except OSError as exc:  # ``out`` holds results (or is a link): swap below
        if not isinstance(exc, FileExistsError) and exc.errno not in (errno.ENOTEMPTY, errno.ENOTDIR):
            raise
    if not out.is_symlink() and _exchange(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)  # the old results
        return
    backup = _unique_dir(out.parent, ".liverseg-old-", create=False)
    os.rename(out, backup)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(backup, out)  # put the old results back
        raise
    shutil.rmtree(backup, ignore_errors=True)


def write_case_outputs(result: SegmentationResult, ct: Volume, outdir: str | os.PathLike, *,
                       surfaces: str | None = None, overwrite: bool = False,
                       extra_summary: dict | None = None, overview: bool = True,
                       dicom=None) -> dict[str, Path | list[Path]]:
    """Write a case's results into ``outdir`` atomically.

    Writes ``segmentation<ext>`` (uint8 labelmap on the CT grid, format family of the input: see
    :func:`~LiverSegLib.io.output_extension_for`), ``lesions.csv`` (header even with no lesions),
    ``summary.json`` (``result.summary()`` + ``extra_summary`` + surfaces + the list of outputs),
    ``overview.png`` (unless ``overview`` is False), and ``surfaces/*_LPS.stl|obj`` when ``surfaces`` is "stl" or
    "obj".

    Args:
        result: the segmentation result; its labelmap must lie on ``ct``'s grid.
        ct: the input CT (geometry, format family, overview background).
        outdir: the case's output folder; its parent is created if needed.
        surfaces: None, "stl" or "obj".
        overwrite: replace existing results in ``outdir``.
        extra_summary: extra keys for summary.json (e.g. input path, CLI options).
        overview: render ``overview.png`` (needs matplotlib).
        dicom: a :class:`~LiverSegLib.outputs.dicom_export.DicomSource`: also write ``segmentation.dcm`` (DICOM
            SEG) and ``measurements.dcm`` (TID 1500 SR) referencing it (and ``ct_dicom/`` for a derived source).

    Returns:
        Final paths by key: "segmentation", "lesions", "summary", "overview" (when rendered), with surfaces
        "surfaces" (list), with DICOM outputs "dicom_seg", "dicom_sr" and for a derived source "ct_dicom" (list).

    Raises:
        OutputExistsError: ``outdir`` holds files and ``overwrite`` is False (nothing is written).
        InputError: ``outdir`` is a file, or an unsupported surface format.
        ValueError: the labelmap is not on the CT's grid.
    """
    out = Path(outdir).absolute()
    check_output_dir(out, overwrite)
    if surfaces is not None and surfaces.lower() not in SURFACE_FORMATS:
        raise InputError(f"unsupported surface format: {surfaces!r} (use one of {', '.join(SURFACE_FORMATS)})")
    if not result.labelmap.same_grid(ct):
        raise ValueError("the labelmap does not lie on the CT's grid (shape, spacing, origin or direction differ)")
    out.parent.mkdir(parents=True, exist_ok=True)
    # The name is chosen first and the folder made inside the try: a Ctrl-C that lands right after the mkdir (a
    # signal is delivered between two bytecodes) is cleaned up too. A name someone else took is never removed.
    tmp: Path | None = _unique_dir(out.parent, ".liverseg-tmp-", create=False)
    try:
        try:
            tmp.mkdir()
        except FileExistsError:
            tmp = None
            raise
        names = _write_all(result, ct, tmp, surfaces.lower() if surfaces else None, extra_summary, overview, dicom)
        _move_into_place(tmp, out)
    except BaseException:  # also on KeyboardInterrupt: never leave a half-written temp folder behind
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    paths: dict[str, Path | list[Path]] = {k: out / v for k, v in names.items() if k not in ("surfaces", "ct_dicom")}
    for key in ("surfaces", "ct_dicom"):
        if key in names:
            paths[key] = [out / v for v in names[key]]
    return paths
