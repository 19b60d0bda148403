"""Readers for training-data layouts beyond CT + label pairs: per-organ masks, liver-only masks, organ maps, bare CTs.

* **3D-IRCADb** ``MASKS_DICOM.zip`` (:func:`read_ircad_masks`): one DICOM series of 0/255 slices per structure
  (``MASKS_DICOM/<folder>/image_<k>``), merged into one uint8 map in the :data:`~LiverSegLib.training.organs.ORGANS`
  vocabulary. IRCAD writes origin (0, 0, 0), an identity direction and slice positions ``(0, 0, 4k)``: not scanner
  coordinates, but the orientation is right (checked on patient 19's CT: pelvis at low ``k``, lungs at high ``k``,
  liver at low ``i`` = patient's right, spine at high ``j`` = posterior).
* **LiTS** preprocessed liver masks (:func:`read_lits_mask`): 0/1, tumour merged into liver, no image.
* **TotalSegmentator** v2 ``total`` maps (:func:`read_totalsegmentator_map`), optionally placed on their CT with the
  inside of the skin derived from it as ``body``.
* **Unlabelled CT** series (:func:`read_unlabelled`), e.g. TCIA HCC-TACE-Seg, for semi-supervision.

Where structures overlap, :data:`PAINT_ORDER` decides (later wins). In 3D-IRCADb the liver mask contains the
intrahepatic vessels (20-70 % of each portal/venous mask lies inside it, covering 0.5-7 % of the liver), the
intrahepatic bile ducts and the tumours (98.5-100 % of every tumour mask), so liver is painted over the vessels, as in
LiTS, and lesions over the liver.
"""

from __future__ import annotations

import re
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import SimpleITK as sitk  # noqa: N813
from scipy import ndimage

from LiverSegLib.data.samples import _label_onto
from LiverSegLib.errors import InputError
from LiverSegLib.io.image_io import read_volume
from LiverSegLib.pipeline.geometry import _image as _sitk_image
from LiverSegLib.training.organs import ORGAN_NAMES, ORGANS
from LiverSegLib.types import Volume

__all__ = ["PAINT_ORDER", "IRCAD_FOLDER_TO_ORGAN", "TOTALSEG_TO_ORGAN", "list_ircad_mask_sets", "read_ircad_masks",
           "list_lits_masks", "read_lits_mask", "list_unlabelled_series", "read_unlabelled",
           "read_totalsegmentator_map", "organ_map_onto", "body_from_ct"]

#: Overlap priority, lowest first: a later organ overwrites an earlier one where masks overlap. ``body`` is the
#: fallback; ``other`` (bile ducts, stones, metal, non-liver masses) yields to every named organ; liver beats the
#: vessels (LiTS-style livers include their intrahepatic vessels); lesions beat the liver.
PAINT_ORDER: tuple[str, ...] = (
    "body", "fat", "muscle", "other", "bone", "lung", "heart", "bowel", "bladder", "kidney", "adrenal", "spleen",
    "stomach", "pancreas", "gallbladder", "portal_vein", "vena_cava", "aorta", "liver", "lesion")
_RANK = {ORGANS[name]: rank for rank, name in enumerate(PAINT_ORDER)}

#: 3D-IRCADb mask folder (lower case) -> ORGANS name. Every folder of the 17 patients in ``../shared/data`` is here;
#: ``livertumorNN`` of any number is a lesion too (see :func:`_ircad_organ`).
IRCAD_FOLDER_TO_ORGAN: dict[str, str] = {
    "liver": "liver",
    "livertumor": "lesion", "livertumors": "lesion", "livertumor01": "lesion", "livertumor02": "lesion",
    "livertumor03": "lesion", "livercyst": "lesion", "liverkyste": "lesion",
    # Patient 14: a resection cavity at the liver's lateral edge, 82 % of it outside the liver mask: not a lesion.
    "metastasectomie": "other",
    # Patient 7: a 670 ml round mass below the liver and above the right kidney, in the right adrenal's place (that
    # patient has no right adrenal mask); it touches the liver mask in 230 voxels only: not a liver lesion.
    "tumor": "other",
    "portalvein": "portal_vein", "portalvein1": "portal_vein",
    "venacava": "vena_cava", "venoussystem": "vena_cava",
    "artery": "aorta",
    "biliarysystem": "other", "stones": "other", "metal": "other",
    "bone": "bone",
    "gallbladder": "gallbladder",
    "kidneys": "kidney", "leftkidney": "kidney", "rightkidney": "kidney",
    "leftlung": "lung", "rightlung": "lung", "lungs": "lung",
    "leftsurrenalgland": "adrenal", "rightsurrenalgland": "adrenal",
    "leftsurretumor": "adrenal", "rightsurretumor": "adrenal",
    "pancreas": "pancreas",
    "skin": "body",  # a filled body outline in all 17 patients (filling it slice-wise adds nothing)
    "spleen": "spleen",
    "stomach": "stomach",
}

# TotalSegmentator v2 "total" numbering (its class_map; checked on example_ct: 1 sits left-posterior beside the ribs,
# 2/3 right/left kidneys, 10-14 at -750 HU, 25-33 vertebrae rising from the sacrum, 80-89 at 5-50 HU).
_TS_GROUPS: dict[str, tuple[int, ...]] = {
    "spleen": (1,), "kidney": (2, 3, 23, 24), "gallbladder": (4,), "liver": (5,), "stomach": (6,), "pancreas": (7,),
    "adrenal": (8, 9), "lung": (10, 11, 12, 13, 14),
    "bowel": (15, 18, 19, 20),  # oesophagus, small bowel, duodenum, colon
    "other": (16, 17, 22, 53, 79, 90),  # trachea, thyroid, prostate, pulmonary vein, spinal cord, brain
    "bladder": (21,),
    "bone": (25, *range(26, 51), *range(69, 79), 91, *range(92, 118)),  # sacrum, vertebrae, limbs, skull, ribs...
    "heart": (51, 61),  # heart, left atrial appendage
    "aorta": (52, 54, 55, 56, 57, 58, 65, 66),  # aorta and the arteries
    "vena_cava": (59, 60, 62, 63, 67, 68),  # brachiocephalic veins, superior/inferior vena cava, iliac veins
    "portal_vein": (64,),
    "muscle": tuple(range(80, 90)),  # gluteus, autochthon, iliopsoas
}
#: TotalSegmentator v2 ``total`` label (1-117) -> ORGANS name.
TOTALSEG_TO_ORGAN: dict[int, str] = dict(sorted((v, name) for name, vs in _TS_GROUPS.items() for v in vs))
_TS_MAX = 117

_IRCAD = {"licence": "CC BY-NC-ND 4.0", "label_origin": "manual 3D-IRCADb", "kind": "organ_map"}
_IRCAD_DIR = re.compile(r"3Dircadb(\d+)\.(\d+)", re.IGNORECASE)
_LITS_FILE = re.compile(r"segmentation-(\d+)\.nii(\.gz)?", re.IGNORECASE)


def _folder(root: Path | str, what: str) -> Path:
    """``root`` as a Path; a one-line InputError naming ``what`` when it is not a folder."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{what} folder not found: {root}")
    return root


# ------------------------------------------------------------------------------------------------------ 3D-IRCADb


def list_ircad_mask_sets(root: Path | str) -> dict[str, Path]:
    """The ``3Dircadb<r>.<n>/MASKS_DICOM.zip`` archives under ``root``, as ``{"ircad<r>.<n>": path}`` in numeric order.

    Raises:
        InputError: ``root`` is not a folder.
    """
    root = _folder(root, "3D-IRCADb mask")
    found = {}
    for zip_path in root.glob("*/MASKS_DICOM.zip"):
        match = _IRCAD_DIR.fullmatch(zip_path.parent.name)
        if match:
            found[(int(match[1]), int(match[2]))] = zip_path
    return {f"ircad{r}.{n}": found[(r, n)] for r, n in sorted(found)}


def _ircad_organ(folder: str) -> str | None:
    """ORGANS name of an IRCAD mask folder (case-insensitive), or None when unknown."""
    key = folder.lower()
    if re.fullmatch(r"livertumou?r\d+", key):
        return "lesion"
    return IRCAD_FOLDER_TO_ORGAN.get(key)


def _mask_folders(zf: zipfile.ZipFile, where: Path) -> dict[str, list[str]]:
    """``{folder: [member names]}`` of the files ``.../MASKS_DICOM/<folder>/<file>`` in the archive."""
    folders: dict[str, list[str]] = {}
    for info in zf.infolist():
        parts = PurePosixPath(info.filename).parts
        lowered = [p.lower() for p in parts]
        if info.is_dir() or "masks_dicom" not in lowered:
            continue
        rest = parts[lowered.index("masks_dicom") + 1:]
        # Only plain "<folder>/<file>" names: nothing that could escape the extraction folder, no sub-folders.
        if len(rest) == 2 and not {".", ".."} & set(rest) and "\\" not in info.filename:
            folders.setdefault(rest[0], []).append(info.filename)
    if not folders:
        raise InputError(f"{where} holds no MASKS_DICOM/<organ>/ folders; pass a 3D-IRCADb MASKS_DICOM.zip")
    return folders


def _read_mask_series(zf: zipfile.ZipFile, members: list[str], folder: Path, label: str) -> Volume:
    """Extract one organ's slices into ``folder`` and read them as one series (GDCM orders them by position)."""
    folder.mkdir()
    for name in members:
        (folder / PurePosixPath(name).name).write_bytes(zf.read(name))
    vol = read_volume(folder)
    if vol.metadata.get("series_in_folder", 1) != 1 or vol.metadata.get("file_count") != len(members):
        raise InputError(f"{label} is not one DICOM series ({vol.metadata.get('file_count')} of {len(members)} files "
                         f"in series, {vol.metadata.get('series_in_folder', 1)} series)")
    return vol


def _fill_if_shell(mask: np.ndarray) -> np.ndarray:
    """``mask`` filled slice-wise (axis 0) when it is only an outline; a filled mask is returned as it is.

    All 17 IRCAD skin masks are filled bodies; checking a few slices (not filling all) keeps the read fast.
    """
    ks = np.flatnonzero(mask.any(axis=(1, 2)))
    if ks.size == 0:
        return mask
    sample = ks[np.linspace(0, ks.size - 1, min(5, ks.size)).astype(int)]
    before = sum(int(mask[k].sum()) for k in sample)
    after = sum(int(ndimage.binary_fill_holes(mask[k]).sum()) for k in sample)
    return _fill_slicewise(mask, 0) if after > 1.05 * before else mask


def read_ircad_masks(zip_path: Path | str, exclude: Iterable[str] = ()) -> Volume:
    """Merge a 3D-IRCADb ``MASKS_DICOM.zip`` into one organ map.

    Each ``MASKS_DICOM/<folder>/`` (one DICOM file per slice, values 0/255, sometimes 0/1) is extracted to a temporary
    folder, read as a series (slices ordered by position) and painted in :data:`PAINT_ORDER` with the organ
    :data:`IRCAD_FOLDER_TO_ORGAN` gives it (any non-zero voxel is inside the structure).

    Args:
        zip_path: the archive, e.g. ``.../3Dircadb1.19/MASKS_DICOM.zip``.
        exclude: folder names (case-insensitive) to leave out, e.g. ``("skin",)``.

    Returns:
        uint8 organ map (:data:`~LiverSegLib.training.organs.ORGANS` values) on the masks' grid. ``metadata`` holds
        ``source`` ("3D-IRCADb-01"), ``patient`` ("ircad1.19"), ``licence``, ``label_origin``, ``kind``, ``path``,
        ``folders`` (folder -> organ used), ``excluded`` and ``organs`` (sorted names of the organs present).

    Raises:
        InputError: missing or unreadable archive, no ``MASKS_DICOM/<organ>/`` folders, a folder with no organ
            mapping (extend :data:`IRCAD_FOLDER_TO_ORGAN` or exclude it), an ``exclude`` name that is neither a
            known IRCAD folder nor in the archive, a folder that is not one DICOM series, or folders on different
            grids.
    """
    path = Path(zip_path)
    if not path.is_file():
        raise InputError(f"3D-IRCADb mask archive not found: {path}")
    match = _IRCAD_DIR.fullmatch(path.parent.name)
    patient = f"ircad{match[1]}.{match[2]}" if match else path.stem
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{path} is not a readable zip archive ({exc})") from None
    with zf, tempfile.TemporaryDirectory(prefix="liverseg-ircad-") as tmp:
        folders = _mask_folders(zf, path)
        skip = {name.lower() for name in exclude}
        present = {f.lower() for f in folders}
        unknown = sorted(n for n in skip if n not in present and _ircad_organ(n) is None)
        if unknown:
            raise InputError(f"exclude names {unknown} are not 3D-IRCADb mask folders (the archive holds "
                             f"{sorted(folders)})")
        used = {f: _ircad_organ(f) for f in folders if f.lower() not in skip}
        unmapped = sorted(f for f, organ in used.items() if organ is None)
        if unmapped:
            raise InputError(f"{path} has mask folder(s) {unmapped} with no organ mapping; add them to "
                             f"IRCAD_FOLDER_TO_ORGAN or pass exclude={unmapped}")
        out: np.ndarray | None = None
        grid: Volume | None = None
        # Paint the lowest priority first so that later (higher) organs overwrite it where masks overlap.
        for i, folder in enumerate(sorted(used, key=lambda f: (_RANK[ORGANS[used[f]]], f.lower()))):
            label = f"{path}:{folder}"
            vol = _read_mask_series(zf, folders[folder], Path(tmp) / str(i), label)
            if grid is None:
                grid, out = vol, np.zeros(vol.array_zyx.shape, np.uint8)
            elif not grid.same_grid(vol, atol=1e-3):
                raise InputError(f"{label} lies on another grid than the archive's other masks")
            mask = vol.array_zyx > 0
            if used[folder] == "body":
                mask = _fill_if_shell(mask)
            out[mask] = ORGANS[used[folder]]
    if grid is None or out is None:
        raise InputError(f"{path}: every mask folder was excluded; nothing to read")
    present_values = np.flatnonzero(np.bincount(out.ravel(), minlength=256))
    meta: dict[str, Any] = {
        **_IRCAD, "source": f"3D-IRCADb-{int(match[1]):02d}" if match else "3D-IRCADb-01", "patient": patient,
        "path": str(path), "folders": {f: used[f] for f in sorted(used)}, "excluded": sorted(skip & present),
        "organs": sorted(ORGAN_NAMES[int(v)] for v in present_values if v != 0),
    }
    return Volume(out, grid.spacing_xyz, grid.origin_xyz, grid.direction, meta)


# ----------------------------------------------------------------------------------------------------------- LiTS


def list_lits_masks(root: Path | str) -> dict[str, Path]:
    """The ``segmentation-<n>.nii[.gz]`` files under ``root`` as ``{"lits-<n>": path}``, in numeric order.

    Raises:
        InputError: ``root`` is not a folder.
    """
    root = _folder(root, "LiTS mask")
    found = {int(m[1]): p for p in root.iterdir() if (m := _LITS_FILE.fullmatch(p.name)) and p.is_file()}
    return {f"lits-{n}": found[n] for n in sorted(found)}


def read_lits_mask(path: Path | str) -> Volume:
    """A preprocessed LiTS liver mask (0 background, 1 liver with its tumours merged in) as a uint8 0/1 volume.

    The files in ``../shared/data/lits_liver_masks`` were resampled to 1 mm along z and cropped to the liver slices
    (20 slices of margin) by a public LiTS project; their direction matrices differ (identity, diag(1, -1, 1),
    diag(-1, -1, 1)) but in patient space every liver lies on the patient's right.

    Returns:
        The mask on its stored grid; ``metadata`` adds ``source`` "LiTS", ``licence``, ``case`` ("lits-<n>"),
        ``kind`` "label" and ``label_origin``.

    Raises:
        InputError: unreadable file (see :func:`~LiverSegLib.io.image_io.read_volume`) or values other than 0/1.
    """
    path = Path(path)
    vol = read_volume(path)
    arr = vol.array_zyx
    bad = (arr != 0) & (arr != 1)
    if bad.any():
        values = ", ".join(f"{v:g}" for v in np.unique(arr[bad])[:5])
        raise InputError(f"{path} holds values other than 0/1 ({values}); a LiTS liver mask has 0 background and "
                         "1 liver (tumour merged)")
    match = _LITS_FILE.fullmatch(path.name)
    meta = {**vol.metadata, "source": "LiTS", "licence": "CC BY-NC-SA 4.0", "kind": "label",
            "case": f"lits-{match[1]}" if match else path.name.split(".")[0],
            "label_origin": "manual LiTS, tumour merged into liver; z resampled to 1 mm, cropped to the liver"}
    return Volume(arr.astype(np.uint8), vol.spacing_xyz, vol.origin_xyz, vol.direction, meta)


# ------------------------------------------------------------------------------------------------ unlabelled CT


def list_unlabelled_series(root: Path | str) -> list[Path]:
    """The NIfTI files (``.nii``/``.nii.gz``, not hidden) directly under ``root``, sorted by name.

    Raises:
        InputError: ``root`` is not a folder.
    """
    root = _folder(root, "unlabelled CT")
    return sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.name.lower().endswith((".nii", ".nii.gz")))


def read_unlabelled(path: Path | str) -> Volume:
    """An unlabelled CT (TCIA HCC-TACE-Seg series ``HCC_<id>_s<series>.nii.gz``) with its source and licence.

    Raises:
        InputError: see :func:`~LiverSegLib.io.image_io.read_volume`.
    """
    path = Path(path)
    vol = read_volume(path)
    meta = {**vol.metadata, "source": "TCIA HCC-TACE-Seg", "licence": "CC BY 4.0", "kind": "ct", "labelled": False,
            "series": path.name.split(".")[0]}
    return Volume(vol.array_zyx, vol.spacing_xyz, vol.origin_xyz, vol.direction, meta)


# ------------------------------------------------------------------------------------------------ TotalSegmentator


def _fill_slicewise(mask: np.ndarray, axis: int) -> np.ndarray:
    """``mask`` with the holes of each 2D slice across ``axis`` filled."""
    moved = np.moveaxis(mask, axis, 0)
    filled = np.stack([ndimage.binary_fill_holes(s) for s in moved])
    return np.moveaxis(filled, 0, axis)


def body_from_ct(ct: Volume, threshold_hu: float = -500.0) -> np.ndarray:
    """Boolean inside-the-skin mask of a CT: voxels above ``threshold_hu``, largest connected component, holes
    filled slice by slice across the array axis nearest to the patient's z (so lungs and bowel gas are inside)."""
    component, count = ndimage.label(ct.array_zyx > threshold_hu)
    if count == 0:
        return np.zeros(ct.array_zyx.shape, bool)
    sizes = np.bincount(component.ravel())
    sizes[0] = 0
    body = component == int(np.argmax(sizes))
    del component
    axis = 2 - int(np.argmax(np.abs(ct.direction[2])))  # direction columns are i, j, k; array axes are k, j, i
    return _fill_slicewise(body, axis)


def organ_map_onto(organ: Volume, ct: Volume) -> Volume:
    """An organ map moved onto ``ct``'s grid exactly, through patient space (nearest label), with the unlabelled
    inside of the skin (:func:`body_from_ct`) as ``body``; the metadata is ``ct``'s."""
    placed = sitk.GetArrayFromImage(_label_onto(_sitk_image(organ.array_zyx, organ), _sitk_image(ct.array_zyx, ct)))
    placed[(placed == 0) & body_from_ct(ct)] = ORGANS["body"]
    return ct.with_array(placed)


def read_totalsegmentator_map(path: Path | str, ct: Volume | None = None) -> Volume:
    """A TotalSegmentator v2 ``total`` label map (values 0-117) in the ORGANS vocabulary.

    Args:
        path: the multi-label NIfTI (e.g. ``example_seg_fast_force_split.nii.gz``).
        ct: the CT it was predicted on. The map is then moved onto the CT's grid (exactly, through patient space:
            a map whose rows are stored flipped, as ``example_seg_dicom.nii.gz``, comes back in the CT's order) and
            the unlabelled inside of the skin (:func:`body_from_ct`) becomes ``body``, which TotalSegmentator
            does not label.

    Returns:
        uint8 organ map (on ``ct``'s grid when given, else on the file's). ``metadata``: ``source``
        "TotalSegmentator", ``label_origin``, ``licence``, ``kind``, ``path``, ``organs``.

    Raises:
        InputError: unreadable file, non-integer values or values outside 0-117 (not a v2 ``total`` map), or a map
            whose voxel centres differ from the CT's.
    """
    vol = read_volume(path)
    arr = vol.array_zyx
    if arr.size and (np.issubdtype(arr.dtype, np.floating) and not np.array_equal(arr, np.round(arr))
                     or arr.min() < 0 or arr.max() > _TS_MAX):
        raise InputError(f"{path} holds values outside the integers 0-{_TS_MAX} (range {arr.min():g} to "
                         f"{arr.max():g}); pass a TotalSegmentator v2 'total' multi-label map")
    lut = np.zeros(_TS_MAX + 1, np.uint8)
    for value, name in TOTALSEG_TO_ORGAN.items():
        lut[value] = ORGANS[name]
    organ = vol.with_array(lut[arr.astype(np.intp)])
    if ct is not None:
        organ = organ_map_onto(organ, ct)
    present = np.flatnonzero(np.bincount(organ.array_zyx.ravel(), minlength=256))
    meta = {"source": "TotalSegmentator", "label_origin": "TotalSegmentator v2 'total' prediction",
            "licence": "that of the CT it was predicted on (TotalSegmentator's sample files: Apache-2.0)",
            "kind": "organ_map", "path": str(path), "organs": sorted(ORGAN_NAMES[int(v)] for v in present if v),
            "body_from_ct": ct is not None}
    return Volume(organ.array_zyx, organ.spacing_xyz, organ.origin_xyz, organ.direction, meta)
