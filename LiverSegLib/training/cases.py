"""Training cases on a stage's grid, optionally cached on disk as memory-mapped arrays.

A case is brought to the grid exactly as the predictor brings a CT (canonical LPS order, the stage's spacing, the HU
window clip) but kept in HU: synthetic lesions are inserted in HU, and samplers normalise each sample with
:func:`~LiverSegLib.pipeline.stage.normalize_input`, the predictor's own normalisation. With a cache folder a
LiTS-sized dataset does not have to fit in memory: images are stored as float16 ``.npy`` files and memory-mapped.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - torch convention

from LiverSegLib.config import StageConfig
from LiverSegLib.pipeline.geometry import to_canonical
from LiverSegLib.pipeline.stage import stage_grid
from LiverSegLib.types import Volume

__all__ = ["PreparedCase", "prepare_case", "prepare_cached"]

# Bump when the preparation changes, so stale cache files are not reused.
_CACHE_VERSION = 1


@dataclass
class PreparedCase:
    """A case on a stage's grid in canonical (axial LPS, z-y-x) order.

    Attributes:
        name: case name (for logs and the validation table).
        image: HU values clipped to the stage's window, float32 or float16 (possibly memory-mapped).
        label: uint8 label values, lesion (2) merged into liver (1) for a liver-only stage.
        spacing_xyz: grid spacing in mm.
        weight: relative probability of drawing this case.
    """

    name: str
    image: np.ndarray
    label: np.ndarray
    spacing_xyz: tuple[float, float, float]
    weight: float = 1.0


def prepare_case(name: str, ct: Volume, label: Volume, stage: StageConfig, weight: float = 1.0) -> PreparedCase:
    """Bring a CT and its label map to the stage's grid (labels by nearest neighbour)."""
    ct_c, _ = to_canonical(ct)
    lab_c, _ = to_canonical(label)
    image = stage_grid(ct_c.array_zyx, ct_c.spacing_xyz, stage, normalize=False)
    lab = np.ascontiguousarray(lab_c.array_zyx, dtype=np.uint8)
    if image.shape != lab.shape:
        t = torch.from_numpy(lab)[None, None].float()
        lab = F.interpolate(t, size=image.shape, mode="nearest-exact")[0, 0].to(torch.uint8).numpy()
    if not stage.has_lesion:
        lab = np.where(lab == 2, np.uint8(1), lab)  # lesion is liver; a hard-negative value (3) stays
    spacing = tuple(float(s) * n / m for s, n, m in zip(ct_c.spacing_xyz, ct_c.array_zyx.shape[::-1],
                                                         image.shape[::-1], strict=True))
    return PreparedCase(name, np.ascontiguousarray(image), np.ascontiguousarray(lab), spacing, weight)


def prepare_cached(name: str, load, source_files: list[Path], stage: StageConfig, cache_dir: Path | None,
                   weight: float = 1.0) -> PreparedCase:
    """:func:`prepare_case` through a cache keyed by the source files and the stage's preprocessing.

    Args:
        name: case name.
        load: ``load() -> (ct, label)`` volumes, called only on a cache miss.
        source_files: files whose path, size and modification time identify the case.
        stage: the stage whose grid and window apply.
        cache_dir: folder for the ``.npy`` files (``None``: no cache, arrays in memory).
    """
    if cache_dir is None:
        return prepare_case(name, *load(), stage, weight)
    ident = {"v": _CACHE_VERSION, "name": name, "pre": stage.preprocessing_dict(), "lesion": stage.has_lesion,
             "files": [[str(Path(f).resolve()), os.stat(f).st_size, int(os.stat(f).st_mtime)] for f in source_files]}
    key = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    cache_dir = Path(cache_dir)
    files = {k: cache_dir / f"{name}-{key}-{k}.npy" for k in ("image", "label")}
    meta_path = cache_dir / f"{name}-{key}.json"
    if not (meta_path.is_file() and all(f.is_file() for f in files.values())):
        case = prepare_case(name, *load(), stage, weight)
        cache_dir.mkdir(parents=True, exist_ok=True)
        for k, arr in (("image", case.image.astype(np.float16)), ("label", case.label)):
            tmp = files[k].with_suffix(f".tmp{os.getpid()}.npy")
            np.save(tmp, arr)
            os.replace(tmp, files[k])  # atomic: a concurrent rank never reads half a file
        tmp = meta_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"spacing_xyz": case.spacing_xyz, **ident}))
        os.replace(tmp, meta_path)
    spacing = tuple(json.loads(meta_path.read_text())["spacing_xyz"])
    return PreparedCase(name, np.load(files["image"], mmap_mode="r"), np.load(files["label"], mmap_mode="r"),
                        spacing, weight)
