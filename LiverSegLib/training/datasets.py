"""Training data sets on disk: recognise their layout, pair images with labels, load pairs, split into folds.

Three layouts are recognised (checked in this order):

* ``"msd"`` -- Medical Segmentation Decathlon (Task03_Liver) and nnU-Net raw data: ``dataset.json`` and/or the
  ``imagesTr/`` + ``labelsTr/`` folders. The ``"training"`` list of ``dataset.json`` is used when present (paths are
  relative to the root, e.g. ``"./imagesTr/liver_0.nii.gz"``); otherwise files are matched by name between the two
  folders (an nnU-Net channel suffix ``_0000`` on the image is ignored). Case name: the image file name without its
  extension (``liver_0``).
* ``"lits"`` -- LiTS: ``volume-N.nii[.gz]`` with ``segmentation-N.nii[.gz]``, searched recursively (the challenge
  ships them in ``Training Batch 1/`` and ``Training Batch 2/``). Case name: ``lits-N``.
* ``"pairs"`` -- a plain folder of image/label pairs, either ``images/`` + ``labels/`` holding the same file names,
  or side-by-side files ``NAME.ext`` + ``NAME<suffix>.ext`` where the suffix is one of :data:`LABEL_SUFFIXES`
  (``_seg``, ``_label``, ``_labels``, ``_mask``, ``-seg``, ``-label``). Case name: ``NAME``.

Accepted file types everywhere: :data:`IMAGE_EXTENSIONS`. macOS resource-fork files (``._*``, found in the MSD
tarballs) and hidden files are ignored. An image without its label (or a label without its image) is an error, not
a silently smaller training set: a partly copied data set should be noticed before hours of training.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from LiverSegLib.errors import InputError
from LiverSegLib.io.image_io import read_volume
from LiverSegLib.types import LESION_LABEL, LIVER_LABEL, Volume

__all__ = ["CasePair", "IMAGE_EXTENSIONS", "LABEL_SUFFIXES", "detect_layout", "list_cases", "load_pair",
           "split_folds"]

# Longest first so that ".nii.gz" wins over ".nii" (and ".gz" alone is never taken for an extension).
IMAGE_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
LABEL_SUFFIXES: tuple[str, ...] = ("_labels", "_label", "_mask", "_seg", "-label", "-seg")
_LAYOUT_HELP = ("expected LiTS (volume-N.nii + segmentation-N.nii), MSD (dataset.json, imagesTr/, labelsTr/) or "
                "image/label pairs (images/ + labels/, or NAME.nii.gz + NAME_seg.nii.gz)")
_LITS = re.compile(r"^(volume|segmentation)-(\d+)$", re.IGNORECASE)
_SPACING_RTOL = 1e-3


@dataclass(frozen=True)
class CasePair:
    """One training case: its name and the paths of its CT and its labelmap."""

    name: str
    image: Path
    label: Path


def _split_name(path: Path) -> tuple[str, str] | None:
    """``(stem, extension)`` of an image file, or None for anything else (junk, hidden, other types)."""
    name = path.name
    if name.startswith(".") or not path.is_file():  # "._liver_0.nii.gz" (macOS), ".DS_Store"
        return None
    low = name.lower()
    ext = next((e for e in IMAGE_EXTENSIONS if low.endswith(e)), None)
    return None if ext is None or len(name) == len(ext) else (name[: -len(ext)], ext)


def _images_in(folder: Path, recursive: bool = False) -> list[tuple[str, Path]]:
    """``(stem, path)`` of the image files in ``folder``, in a deterministic order."""
    paths = folder.rglob("*") if recursive else folder.iterdir()
    found = [(parts[0], p) for p in paths if (parts := _split_name(p)) is not None]
    return sorted(found, key=lambda sp: str(sp[1]))


def _root(root: str | Path) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise InputError(f"data set folder {path} {what} (pass the folder that holds the training images)")
    return path


def _is_msd(root: Path) -> bool:
    has_images = (root / "imagesTr").is_dir()
    return has_images and ((root / "labelsTr").is_dir() or (root / "dataset.json").is_file())


def _flat_label_stem(stem: str) -> str | None:
    """The image stem a side-by-side label file belongs to (``liver_seg`` -> ``liver``), or None."""
    low = stem.lower()
    suffix = next((s for s in LABEL_SUFFIXES if low.endswith(s) and len(stem) > len(s)), None)
    return None if suffix is None else stem[: -len(suffix)]


def detect_layout(root: str | Path) -> str:
    """Recognise how the training data set under ``root`` is organised.

    Args:
        root: the data set folder.

    Returns:
        ``"msd"``, ``"lits"`` or ``"pairs"`` (see the module docstring for what each means).

    Raises:
        InputError: ``root`` is missing or not a folder, or none of the three layouts matches (one line naming the
            folder and the layouts that are known).
    """
    path = _root(root)
    if _is_msd(path):
        return "msd"
    if any(_LITS.match(stem) for stem, _ in _images_in(path, recursive=True)):
        return "lits"
    if (path / "images").is_dir() and (path / "labels").is_dir():
        return "pairs"
    if any(_flat_label_stem(stem) for stem, _ in _images_in(path)):
        return "pairs"
    raise InputError(f"could not recognise the dataset layout of {path}: {_LAYOUT_HELP}")


def _pair_up(images: dict[str, Path], labels: dict[str, Path], where: Path) -> list[CasePair]:
    """Pairs with the same name; any image or label left without its partner is an error naming the file."""
    for name, path in sorted(images.items()):
        if name not in labels:
            raise InputError(f"training image {path} has no label file in {where} (add it or remove the image)")
    for name, path in sorted(labels.items()):
        if name not in images:
            raise InputError(f"label file {path} has no training image in {where} (add it or remove the label)")
    return [CasePair(name, images[name], labels[name]) for name in sorted(images)]


def _add(found: dict[str, Path], name: str, path: Path) -> None:
    if name in found and found[name] != path:
        raise InputError(f"case {name!r} appears twice: {found[name]} and {path} (keep one of them)")
    found[name] = path


def _lits_cases(root: Path) -> list[CasePair]:
    images: dict[str, Path] = {}
    labels: dict[str, Path] = {}
    for stem, path in _images_in(root, recursive=True):
        if (m := _LITS.match(stem)) is not None:
            _add(images if m.group(1).lower() == "volume" else labels, f"lits-{int(m.group(2))}", path)
    return _pair_up(images, labels, root)


def _msd_cases(root: Path) -> list[CasePair]:
    images: dict[str, Path] = {}
    labels: dict[str, Path] = {}
    spec = root / "dataset.json"
    if spec.is_file():
        try:
            content = json.loads(spec.read_text(encoding="utf-8"))
        except (ValueError, OSError) as exc:
            first = (str(exc).splitlines() or ["unreadable"])[0]
            raise InputError(f"cannot read {spec}: {first} (is it valid JSON?)") from None
        training = content.get("training") if isinstance(content, dict) else None
        if isinstance(training, list) and training:
            for entry in training:
                if not isinstance(entry, dict) or not {"image", "label"} <= set(entry):
                    raise InputError(f"{spec} has a training entry without image/label: {str(entry)[:80]}")
                image, label = root / entry["image"], root / entry["label"]
                for p in (image, label):
                    if not p.is_file():
                        raise InputError(f"{spec} lists {p}, which does not exist (complete the data set)")
                parts = _split_name(image)
                name = parts[0] if parts else image.name
                _add(images, name, image)
                _add(labels, name, label)
            return _pair_up(images, labels, root)
    # No usable "training" list (or no dataset.json): match file names. nnU-Net names images NAME_0000.nii.gz.
    for stem, path in _images_in(root / "imagesTr"):
        _add(images, stem[:-5] if stem.endswith("_0000") else stem, path)
    if (root / "labelsTr").is_dir():
        for stem, path in _images_in(root / "labelsTr"):
            _add(labels, stem, path)
    return _pair_up(images, labels, root)


def _pairs_cases(root: Path) -> list[CasePair]:
    images: dict[str, Path] = {}
    labels: dict[str, Path] = {}
    if (root / "images").is_dir() and (root / "labels").is_dir():
        for stem, path in _images_in(root / "images"):
            _add(images, stem, path)
        for stem, path in _images_in(root / "labels"):
            _add(labels, stem, path)
        return _pair_up(images, labels, root)
    for stem, path in _images_in(root):
        owner = _flat_label_stem(stem)
        if owner is None:
            _add(images, stem, path)
        elif owner in labels:  # NAME_seg and NAME_label side by side: which one is right is the user's call
            raise InputError(f"case {owner!r} has two label files: {labels[owner]} and {path} (keep one of them)")
        else:
            labels[owner] = path
    return _pair_up(images, labels, root)


def list_cases(root: str | Path) -> list[CasePair]:
    """All complete image/label pairs of the data set under ``root``, sorted by case name.

    Args:
        root: the data set folder (layout as recognised by :func:`detect_layout`).

    Returns:
        The pairs, sorted by name (the same folder always gives the same list).

    Raises:
        InputError: unknown layout or missing folder; an image without its label or a label without its image
            (naming the file); a case name that appears twice; an MSD ``dataset.json`` that is not valid JSON or
            lists missing files; or no complete pair at all.
    """
    path = _root(root)
    layout = detect_layout(path)
    cases = {"lits": _lits_cases, "msd": _msd_cases, "pairs": _pairs_cases}[layout](path)
    if not cases:
        raise InputError(f"{path} looks like a {layout} data set but holds no complete image/label pair")
    return sorted(cases, key=lambda c: c.name)


def _present_values(array: np.ndarray) -> np.ndarray:
    """Distinct values of ``array``, slab by slab (a whole-volume ``np.unique`` sorts hundreds of MB)."""
    if array.shape[0] == 0:
        return np.zeros(0, dtype=array.dtype)
    return np.unique(np.concatenate([np.unique(array[k : k + 8]) for k in range(0, array.shape[0], 8)]))


def load_pair(pair: CasePair, label_map: dict[int, int] | None = None) -> tuple[Volume, Volume]:
    """Read a case's CT and labelmap and bring the labelmap to LiverSeg's classes.

    Args:
        pair: the case, e.g. from :func:`list_cases`.
        label_map: source label value -> LiverSeg class (0 background, 1 liver, 2 lesion). Default: identity for
            0, 1, 2 (the LiTS and MSD Task03 convention). Use e.g. ``{5: 1}`` for TotalSegmentator's liver; 0 stays
            background unless the map names it. Values that the map does not name become 0 (background); they are
            listed in the label's ``metadata["unmapped_values"]`` so that a forgotten mapping can be spotted.

    Returns:
        ``(ct, label)``: the CT as read (native pixel type) and a uint8 labelmap carrying the CT's geometry. The
        label is taken voxel for voxel: only its shape and spacing are checked against the CT, because some public
        data sets store label headers whose origin or direction differ slightly from their image's.

    Raises:
        InputError: unreadable files (from :func:`~LiverSegLib.io.image_io.read_volume`); a label not on the CT's
            grid (shape, or spacing beyond 1e-3 relative); non-integer label values; a ``label_map`` target other
            than 0, 1 or 2.
    """
    # 0 is background unless the map says otherwise, so it is never reported as unmapped.
    mapping = {0: 0, **({LIVER_LABEL: LIVER_LABEL, LESION_LABEL: LESION_LABEL} if label_map is None else label_map)}
    bad = sorted({int(v) for v in mapping.values()} - {0, LIVER_LABEL, LESION_LABEL})
    if bad:
        raise InputError(f"label_map targets must be 0 (background), 1 (liver) or 2 (lesion), got {bad}")
    ct, lab = read_volume(pair.image), read_volume(pair.label)
    if ct.array_zyx.shape != lab.array_zyx.shape:
        raise InputError(f"case {pair.name}: label grid {lab.shape_xyz} differs from the image grid {ct.shape_xyz} "
                         f"({pair.label})")
    a, b = np.asarray(ct.spacing_xyz), np.asarray(lab.spacing_xyz)
    if np.any(np.abs(a - b) > _SPACING_RTOL * np.maximum(a, b)):
        raise InputError(f"case {pair.name}: label spacing {tuple(np.round(b, 4))} mm differs from the image "
                         f"spacing {tuple(np.round(a, 4))} mm ({pair.label})")
    values = _present_values(lab.array_zyx)
    if np.issubdtype(values.dtype, np.floating) and not np.all(np.isfinite(values) & (values == np.rint(values))):
        raise InputError(f"case {pair.name}: the label holds non-integer values ({pair.label}); is it a labelmap?")
    out = np.zeros(lab.array_zyx.shape, dtype=np.uint8)
    unmapped = []
    for value in (int(v) for v in values):
        target = mapping.get(value)
        if target is None:
            unmapped.append(value)
        elif target:
            out[lab.array_zyx == value] = target
    meta = {**lab.metadata, "kind": "label", "case": pair.name, "unmapped_values": unmapped}
    return ct, Volume(out, ct.spacing_xyz, ct.origin_xyz, ct.direction, meta)


def split_folds(names: list[str], k: int, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """K-fold cross-validation splits of case names.

    Args:
        names: distinct case names; their order does not matter (they are sorted before shuffling, so the folds
            depend only on the set of names, ``k`` and ``seed``).
        k: number of folds, 2 to ``len(names)``.
        seed: shuffling seed.

    Returns:
        ``k`` tuples ``(train, val)``; every name is in exactly one ``val``; fold sizes differ by at most one; both
        lists are sorted.

    Raises:
        ValueError: ``k < 2``, ``k > len(names)`` or duplicate names.
    """
    if len(set(names)) != len(names):
        raise ValueError("split_folds needs distinct case names")
    if k < 2 or k > len(names):
        raise ValueError(f"k must be between 2 and the number of cases ({len(names)}), got {k}")
    order = np.random.default_rng(seed).permutation(len(names))
    ordered = sorted(names)
    folds = [sorted(ordered[i] for i in chunk) for chunk in np.array_split(order, k)]
    return [(sorted(n for j, f in enumerate(folds) if j != i for n in f), val) for i, val in enumerate(folds)]
