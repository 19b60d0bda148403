"""Filtered pseudo-labels on unlabelled CT: teacher cascades -> consensus labels -> a student's training cases.

Issue 9 (item 3): the unlabelled HCC-TACE-Seg series show what no labelled case does, chiefly a real heart against
the liver dome in a late phase, where it is as grey as the liver. Each teacher (a folder with
``han_liver_coarse.pt`` and ``han_liver_fine.pt``, e.g. the leave-one-out fold of another seed, which never saw the
fold's held-out case) segments every series with the shipped cascade rules. The label keeps only what the teachers
agree on and what the cascade itself decided:

* ``1`` liver (lesions included): inside every teacher's final liver, and more than ``band_mm`` inside their
  intersection's outline;
* :data:`~LiverSegLib.training.organs.HARD_NEGATIVE_LABEL` (``3``): tissue some teacher's coarse network joined to
  the liver and its own neck cut (``coarse_neck_mm``) took off, and that no teacher calls liver (nor lies within
  ``band_mm`` of a teacher's liver): the heart above the dome;
* ``0`` background: farther than ``band_mm`` from every teacher's liver;
* :data:`~LiverSegLib.training.organs.IGNORE_LABEL` (``255``) elsewhere: where the teachers disagree and in the band
  around the outline, whose exact place a teacher's ~3 mm surface error makes unreliable. The weighted
  cross-entropy gives these voxels no weight.

Lesion labels are not kept (treated HCC with lipiodol is neither what the teachers nor the fine stage learned); the
pseudo-labels are meant for the coarse (liver) stage.

Usage::

    python -m LiverSegLib.training.pseudo_labels --out $LIVERSEG_HOME/pseudo/all --teacher DIR_A --teacher DIR_B
    python -m LiverSegLib.training.release_weights ... --pseudo $LIVERSEG_HOME/pseudo/all      # the student

Writes ``OUT/<series>.nii.gz`` (uint8 on the series' grid) and ``OUT/<series>.json`` (the source CT, the teachers'
weights and sha256, the band, the volume of each label in mL).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from LiverSegLib.training.organs import HARD_NEGATIVE_LABEL, IGNORE_LABEL
from LiverSegLib.types import Volume

__all__ = ["consensus_label", "teacher_masks", "write_pseudo_label", "check_teachers", "load_records", "pseudo_cases",
           "patient_of", "main"]


def consensus_label(livers: list[np.ndarray], cut_off: list[np.ndarray], spacing_zyx: tuple[float, float, float],
                    band_mm: float = 2.0) -> np.ndarray:
    """The filtered pseudo-label of one scan from its teachers' masks (see the module's docstring).

    Args:
        livers: each teacher's final liver (lesions included), boolean, all on one grid.
        cut_off: each teacher's coarse liver that its neck cut took off (boolean; empty arrays when nothing was cut).
        spacing_zyx: voxel size in mm along the arrays' axes.
        band_mm: half-width of the ignored band around the consensus outline (0: no band).

    Returns:
        uint8 array: 0 background, 1 liver, 3 hard negative, 255 ignored.
    """
    if not livers or len(livers) != len(cut_off):
        raise ValueError(f"need one cut-off mask per teacher liver, got {len(livers)} livers and {len(cut_off)}")
    union = np.logical_or.reduce([np.asarray(m, bool) for m in livers])
    inter = np.logical_and.reduce([np.asarray(m, bool) for m in livers])
    out = np.full(union.shape, IGNORE_LABEL, np.uint8)
    if band_mm > 0 and union.any():
        far = ndimage.distance_transform_edt(~union, sampling=spacing_zyx) > band_mm
        deep = ndimage.distance_transform_edt(inter, sampling=spacing_zyx) > band_mm
    else:
        far, deep = ~union, inter
    out[far] = 0
    out[deep] = 1
    hard = np.logical_or.reduce([np.asarray(m, bool) for m in cut_off]) & far
    out[hard] = HARD_NEGATIVE_LABEL
    return out


def teacher_masks(teacher_dir: Path, ct: Volume) -> tuple[np.ndarray, np.ndarray]:
    """One teacher's final liver (lesions included) and the coarse liver its neck cut took off, on ``ct``'s grid
    (the coarse stage runs twice, once inside :meth:`~LiverSegLib.pipeline.predictor.Predictor.predict`: about a
    second more per teacher and series, kept for the predictor's API staying as it is)."""
    from LiverSegLib.pipeline.predictor import Predictor
    from LiverSegLib.training.release_weights import fold_model

    predictor = Predictor(fold_model(Path(teacher_dir), Path(teacher_dir).name), device="cpu", runtime="torch")
    liver = np.asarray(predictor.predict(ct).labelmap.array_zyx) > 0
    whole, cut = predictor.coarse_livers(ct)
    return liver, (np.asarray(whole.array_zyx) > 0) & ~(np.asarray(cut.array_zyx) > 0)


def write_pseudo_label(ct_path: Path, ct: Volume, teachers: list[Path], out_dir: Path, band_mm: float = 2.0) -> dict:
    """Segment ``ct`` with every teacher and write its filtered pseudo-label (``.nii.gz``) and a ``.json`` record."""
    from LiverSegLib.io.image_io import write_volume
    from LiverSegLib.weights import sha256_file

    t0 = time.perf_counter()
    masks = [teacher_masks(t, ct) for t in teachers]
    label = consensus_label([m[0] for m in masks], [m[1] for m in masks], tuple(ct.spacing_xyz[::-1]), band_mm)
    name = Path(ct_path).name.split(".")[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    voxel_ml = ct.voxel_volume_ml
    record = {
        "series": name, "ct": str(Path(ct_path).resolve()), "band_mm": band_mm,
        "teachers": [{"dir": str(Path(t).resolve()),
                      **{role: sha256_file(Path(t) / f"han_liver_{role}.pt") for role in ("coarse", "fine")}}
                     for t in teachers],
        "teacher_liver_ml": [round(float(m[0].sum()) * voxel_ml, 1) for m in masks],
        "teacher_cut_off_ml": [round(float(m[1].sum()) * voxel_ml, 1) for m in masks],
        "label_ml": {k: round(float(np.count_nonzero(label == v)) * voxel_ml, 1)
                     for k, v in (("liver", 1), ("hard_negative", HARD_NEGATIVE_LABEL), ("ignored", IGNORE_LABEL))},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    tmp = out_dir / f".{name}.tmp{os.getpid()}.nii.gz"
    write_volume(ct.with_array(label), tmp)
    os.replace(tmp, out_dir / f"{name}.nii.gz")  # never a half-written label beside its record
    (out_dir / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def check_teachers(records: list[dict], leave_out: str | None) -> None:
    """Refuse pseudo-labels whose teachers saw ``leave_out`` (a fold's held-out case must not reach its student
    through them): every teacher checkpoint's metadata must name the same held-out case.

    Raises:
        ValueError: naming the series and the teacher file that was trained with the case.
    """
    from LiverSegLib.weights import load_checkpoint

    if leave_out is None:
        return
    seen: dict[str, str | None] = {}
    for r in records:
        for t in r["teachers"]:
            for role in ("coarse", "fine"):
                path = str(Path(t["dir"]) / f"han_liver_{role}.pt")
                if path not in seen:
                    seen[path] = load_checkpoint(path).get("metadata", {}).get("leave_out")
                if seen[path] != leave_out:
                    raise ValueError(f"pseudo-label {r['series']}: teacher {path} was trained with {leave_out} "
                                     f"(it left out {seen[path]}); use that fold's teachers")


def load_records(pseudo_dir: Path, leave_out: str | None = None, exclude: list[str] | tuple[str, ...] = (),
                 ) -> list[dict]:
    """The ``.json`` records of ``pseudo_dir`` minus ``exclude``, checked for a fold (:func:`check_teachers`).

    Raises:
        FileNotFoundError: no pseudo-label is left. ValueError: an unknown series to exclude, or a teacher that saw
            ``leave_out``.
    """
    records = [json.loads(p.read_text()) for p in sorted(Path(pseudo_dir).glob("*.json"))]
    unknown = set(exclude) - {r["series"] for r in records}
    if unknown:
        raise ValueError(f"cannot exclude {', '.join(sorted(unknown))}: no such pseudo-label in {pseudo_dir}")
    records = [r for r in records if r["series"] not in set(exclude)]
    if not records:
        raise FileNotFoundError(f"no pseudo-labels (*.json + *.nii.gz) in {pseudo_dir}")
    check_teachers(records, leave_out)
    return records


def patient_of(series: str) -> str:
    """The patient of an HCC-TACE-Seg series name: ``HCC_009`` of ``HCC_009_s103``."""
    return series.rsplit("_s", 1)[0]


def pseudo_cases(pseudo_dir: Path, stage, patient_weight: float = 2.0, leave_out: str | None = None,
                 exclude: list[str] | tuple[str, ...] = ()) -> list:
    """The pseudo-labelled series of ``pseudo_dir`` on ``stage``'s grid (:class:`~LiverSegLib.training.cases.
    PreparedCase`, named ``pseudo:<series>``); each patient (``HCC_006`` of ``HCC_006_s103``) shares
    ``patient_weight`` among its series, so four series of one patient do not outweigh another's one. For a fold
    (``leave_out``), see :func:`check_teachers`. ``exclude``: series left out (e.g. rejected on sight)."""
    from LiverSegLib.io.image_io import read_volume
    from LiverSegLib.training.cases import prepare_case

    records = load_records(pseudo_dir, leave_out, exclude)
    patients = [patient_of(r["series"]) for r in records]
    out = []
    for r, patient in zip(records, patients, strict=True):
        ct = read_volume(r["ct"])
        label = read_volume(Path(pseudo_dir) / f"{r['series']}.nii.gz")
        if label.array_zyx.shape != ct.array_zyx.shape:
            raise ValueError(f"pseudo-label {r['series']} does not lie on its CT's grid")
        out.append(prepare_case(f"pseudo:{r['series']}", ct, label, stage, patient_weight / patients.count(patient)))
    return out


def main(argv: list[str] | None = None) -> int:
    from LiverSegLib.training.mask_sources import list_unlabelled_series, read_unlabelled

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="folder for <series>.nii.gz and <series>.json")
    p.add_argument("--teacher", required=True, action="append", type=Path,
                   help="a folder with han_liver_coarse.pt and han_liver_fine.pt (repeat for a consensus)")
    p.add_argument("--series-dir", type=Path, default=None,
                   help="folder of unlabelled series (default ../shared/data/hcc_tace_unlabelled)")
    p.add_argument("--series", nargs="*", help="only these series (names without .nii.gz)")
    p.add_argument("--band-mm", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    for t in args.teacher:
        if not all((t / f"han_liver_{r}.pt").is_file() for r in ("coarse", "fine")):
            raise SystemExit(f"error: {t} lacks han_liver_coarse.pt or han_liver_fine.pt")
    if args.series_dir is None:
        from LiverSegLib.data.samples import shared_data_dir

        if shared_data_dir() is None:
            raise SystemExit("error: no ../shared/data beside this checkout; give --series-dir")
        args.series_dir = shared_data_dir() / "hcc_tace_unlabelled"
    paths = list_unlabelled_series(args.series_dir)
    if args.series:
        paths = [q for q in paths if q.name.split(".")[0] in set(args.series)]
    if not paths:
        raise SystemExit(f"error: no unlabelled series to label in {args.series_dir}")
    for path in paths:
        record = write_pseudo_label(path, read_unlabelled(path), args.teacher, args.out, args.band_mm)
        print(json.dumps({k: record[k] for k in ("series", "teacher_liver_ml", "teacher_cut_off_ml", "label_ml",
                                                 "seconds")}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
