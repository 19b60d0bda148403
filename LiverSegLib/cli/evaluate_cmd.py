"""``liverseg evaluate``: LiTS metrics of predicted label maps against references, as a CSV and a table."""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from LiverSegLib.errors import InputError, OutputExistsError

__all__ = ["add_parser", "run"]

_LABELMAP_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".mha", ".mhd", ".dcm")
_DEFAULT_LIVER, _DEFAULT_LESION = 1, 2
_METRIC_COLUMNS = (
    *(f"liver_{m}" for m in ("dice", "voe", "rvd", "assd", "mssd")),
    *(f"lesion_{m}" for m in ("dice", "voe", "rvd", "assd", "mssd")),
    "lesion_precision",
    "lesion_recall",
)
_COUNT_COLUMNS = (
    "lesion_tp", "lesion_fp", "lesion_fn", "n_ref_lesions", "n_pred_lesions",
    "liver_intersection", "liver_pred_voxels", "liver_ref_voxels",
    "lesion_intersection", "lesion_pred_voxels", "lesion_ref_voxels",
)
_CSV_COLUMNS = ("case", *_METRIC_COLUMNS, *_COUNT_COLUMNS, "pred_path", "gt_path", "notes")


def _label_value(text: str) -> int:
    """argparse type of a label option: an integer >= 1, or 'none' (returned as 0) for "no such label here"."""
    if text.strip().lower() == "none":
        return 0
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer label value or 'none', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"label values must be >= 1 (0 is background), got {value}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` sub-command to ``subparsers``."""
    p = subparsers.add_parser(
        "evaluate",
        help="LiTS metrics (Dice, VOE, RVD, ASSD, MSSD, lesion detection) of predictions against references",
        description="Compare predicted label maps with reference label maps on the same grid. Liver is the "
        "liver label plus the lesion label (as in LiTS), lesion is the lesion label; other values of a map "
        "are refused unless its labels are given explicitly, in which case they become background.",
    )
    p.add_argument("pairs", nargs="*", metavar="PRED GT",
                   help="pairs of predicted and reference label map files; either may be a DICOM SEG (.dcm), placed "
                        "on the other's grid")
    p.add_argument("--pred-dir", type=Path, help="folder of predictions, paired with --gt-dir by identical names")
    p.add_argument("--gt-dir", type=Path, help="folder of reference label maps")
    p.add_argument("-o", "--output", type=Path, help="write the per-case metrics to this CSV file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output CSV")
    for who in ("gt", "pred"):
        p.add_argument(f"--{who}-liver-label", type=_label_value, metavar="N",
                       help=f"value of the liver in the {who.upper()} maps (default {_DEFAULT_LIVER})")
        p.add_argument(f"--{who}-lesion-label", type=_label_value, metavar="N|none",
                       help=f"value of lesions in the {who.upper()} maps, or 'none' (default {_DEFAULT_LESION})")
    p.add_argument("--min-overlap", type=float, default=0.0, metavar="F",
                   help="fraction of a reference lesion a predicted lesion must cover to detect it (default 0: any)")
    p.set_defaults(func=run)


def _strip_suffix(name: str) -> str:
    for suffix in _LABELMAP_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _pairs_from_args(args: argparse.Namespace) -> list[tuple[Path, Path]]:
    if args.pred_dir is None and args.gt_dir is None:
        if not args.pairs:
            raise InputError("give PRED GT file pairs or --pred-dir DIR --gt-dir DIR")
        if len(args.pairs) % 2:
            raise InputError(f"expected PRED GT pairs, got an odd number of paths ({len(args.pairs)})")
        paths = [Path(p) for p in args.pairs]
        return list(zip(paths[::2], paths[1::2], strict=True))
    if args.pairs:
        raise InputError("give either PRED GT file pairs or --pred-dir/--gt-dir, not both")
    if args.pred_dir is None or args.gt_dir is None:
        raise InputError("--pred-dir and --gt-dir go together")
    listing = {}
    for flag, folder in (("--pred-dir", args.pred_dir), ("--gt-dir", args.gt_dir)):
        if not folder.is_dir():
            raise InputError(f"{flag} {folder} is not a folder")
        listing[flag] = {
            f.name: f for f in folder.iterdir()
            if f.is_file() and not f.name.startswith(".") and f.name.lower().endswith(_LABELMAP_SUFFIXES)
        }
    preds, gts = listing["--pred-dir"], listing["--gt-dir"]
    if not preds:
        raise InputError(f"no label map files ({', '.join(_LABELMAP_SUFFIXES)}) in --pred-dir {args.pred_dir}")
    unmatched = sorted(set(preds) - set(gts))
    if unmatched:
        # silently dropping predictions would bias the totals, so refuse
        raise InputError(f"{len(unmatched)} prediction(s) have no reference of the same name in {args.gt_dir}: "
                         f"{', '.join(unmatched[:3])}{' ...' if len(unmatched) > 3 else ''}")
    extra = len(set(gts) - set(preds))
    if extra:
        print(f"liverseg: note: {extra} reference file(s) in {args.gt_dir} have no prediction and are not evaluated",
              file=sys.stderr)
    return [(preds[name], gts[name]) for name in sorted(preds)]


def _canonical_labels(array: np.ndarray, liver: int | None, lesion: int | None, explicit: bool, path: Path,
                      who: str) -> np.ndarray:
    """Map a label map to 0 background / 1 liver / 2 lesion."""
    if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
        raise InputError(f"{path} has non-integer values; it does not look like a label map")
    known = [v for v in (liver, lesion) if v is not None]
    other = array != 0
    for v in known:
        other &= array != v
    if not explicit and other.any():
        # e.g. a TotalSegmentator map where 1 is the spleen: guessing would score the wrong organ
        found = np.unique(array[other])
        shown = ", ".join(str(int(v)) for v in found[:5]) + (" ..." if found.size > 5 else "")
        raise InputError(f"{path} holds label values other than 0/{_DEFAULT_LIVER}/{_DEFAULT_LESION} ({shown}); "
                         f"say which are liver and lesion with --{who}-liver-label/--{who}-lesion-label "
                         "(other values then count as background)")
    out = np.zeros(array.shape, dtype=np.uint8)
    if liver is not None:
        out[array == liver] = 1
    if lesion is not None:
        out[array == lesion] = 2
    return out


def _grid_difference(pred: Any, gt: Any) -> str:
    """Which parts of the geometry differ, with both values, for the error message."""
    parts = []
    if pred.array_zyx.shape != gt.array_zyx.shape:
        parts.append(f"size {pred.shape_xyz} vs {gt.shape_xyz}")
    for name, a, b in (("spacing", pred.spacing_xyz, gt.spacing_xyz), ("origin", pred.origin_xyz, gt.origin_xyz)):
        if not np.allclose(a, b, atol=1e-4):
            parts.append(f"{name} {tuple(round(x, 4) for x in a)} vs {tuple(round(x, 4) for x in b)}")
    if not np.allclose(pred.direction, gt.direction, atol=1e-4):
        parts.append("direction " + np.array2string(pred.direction.ravel(), precision=3, separator=",")
                     + " vs " + np.array2string(gt.direction.ravel(), precision=3, separator=","))
    return "; ".join(parts) or "geometry"


def _labels_for(args: argparse.Namespace, who: str) -> tuple[int | None, int | None, bool]:
    """(liver value, lesion value or None, whether the user chose them) for the GT or prediction maps."""
    liver, lesion = getattr(args, f"{who}_liver_label"), getattr(args, f"{who}_lesion_label")
    explicit = liver is not None or lesion is not None
    liver = _DEFAULT_LIVER if liver is None else liver
    lesion = _DEFAULT_LESION if lesion is None else (lesion or None)  # 0 stands for 'none'
    if liver == 0:
        raise InputError(f"--{who}-liver-label must be a label value; only --{who}-lesion-label accepts 'none'")
    if liver == lesion:
        raise InputError(f"--{who}-liver-label and --{who}-lesion-label are both {liver}")
    return liver, lesion, explicit


def _check_output(path: Path | None, overwrite: bool) -> None:
    """Fail before any work when the CSV could not be written."""
    if path is None:
        return
    if path.is_dir():
        raise InputError(f"output {path} is a folder; give a CSV file name")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"output {path} already exists; pass --overwrite to replace it")
    if not path.parent.is_dir():
        raise InputError(f"folder of output {path} does not exist")


def _case_names(pairs: list[tuple[Path, Path]]) -> list[str]:
    names = [_strip_suffix(pred.name) for pred, _ in pairs]
    # identical file names from different folders would make rows ambiguous: fall back to the path as given
    return [n if names.count(n) == 1 else str(pred) for n, (pred, _) in zip(names, pairs, strict=True)]


def _empty_notes(case: dict[str, Any]) -> str:
    notes = [f"{who} {name} empty" for name in ("liver", "lesion") for who, key in (("reference", "ref"),
             ("predicted", "pred")) if case[f"{name}_{key}_voxels"] == 0]
    return "; ".join(notes)


def _evaluate_pairs(pairs: list[tuple[Path, Path]], args: argparse.Namespace) -> list[dict[str, Any]]:
    gt_labels, pred_labels = _labels_for(args, "gt"), _labels_for(args, "pred")
    rows = []
    for name, (pred_path, gt_path) in zip(_case_names(pairs), pairs, strict=True):
        pred, gt, labels = _read_pair(pred_path, gt_path, pred_labels, gt_labels)
        if not pred.same_grid(gt):
            # The same voxels may be stored in another axis order or direction (e.g. a reference NIfTI with its
            # rows reversed against the DICOM it was made from): compare both in the canonical LPS array order.
            from LiverSegLib.pipeline.geometry import to_canonical

            pred_c, gt_c = to_canonical(pred)[0], to_canonical(gt)[0]
            if pred_c.same_grid(gt_c):
                pred, gt = pred_c, gt_c
        if not pred.same_grid(gt):
            raise InputError(f"{pred_path} and {gt_path} are not on the same grid ({_grid_difference(pred, gt)}); "
                             "resample the prediction onto the reference grid")
        p = _canonical_labels(pred.array_zyx, *labels[0], pred_path, "pred")
        g = _canonical_labels(gt.array_zyx, *labels[1], gt_path, "gt")
        spacing_zyx = tuple(reversed(gt.spacing_xyz))  # array axis 0 is k, whose spacing is spacing_xyz[2]
        # imported once a pair is known to be comparable: torch and MONAI take seconds, a refusal should not
        from LiverSegLib.metrics import evaluate_case
        del pred, gt  # full-size volumes; only the uint8 maps are needed from here on
        case = evaluate_case(p, g, spacing_zyx, min_overlap=args.min_overlap)
        rows.append({"case": name, **case, "pred_path": str(pred_path), "gt_path": str(gt_path),
                     "notes": _empty_notes(case)})
    return rows


def _read_pair(pred_path: Path, gt_path: Path, pred_labels, gt_labels):
    """Both maps of a pair, and the label values of each. A DICOM SEG side is placed on the other side's grid (a SEG
    has frames, not a grid) and uses 1 liver / 2 lesion; its frames must lie on that grid."""
    from LiverSegLib.io import read_volume
    from LiverSegLib.io.dicom_seg_reader import is_dicom_seg, read_seg_labelmap

    pred_seg, gt_seg = is_dicom_seg(pred_path), is_dicom_seg(gt_path)
    if pred_seg and gt_seg:
        raise InputError(f"{pred_path} and {gt_path} are both DICOM SEG: give one of them as a labelmap file (a "
                         "SEG has no grid of its own to compare on)")
    seg_labels = (_DEFAULT_LIVER, _DEFAULT_LESION, False)
    if gt_seg:
        pred = read_volume(pred_path)
        return pred, read_seg_labelmap(gt_path, pred), (pred_labels, seg_labels)
    gt = read_volume(gt_path)
    if pred_seg:
        return read_seg_labelmap(pred_path, gt), gt, (seg_labels, gt_labels)
    return read_volume(pred_path), gt, (pred_labels, gt_labels)


def _summary_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from LiverSegLib.metrics import summarize

    s = summarize(rows)
    skipped = ", ".join(f"{k}={n}" for k, n in s["n_skipped"].items() if n)
    mean_row = {"case": "mean", **s["mean"],
                "notes": f"mean over {s['n_cases']} case(s)" + (f"; skipped non-finite: {skipped}" if skipped else "")}
    global_row = {"case": "global", **s["sum"], "liver_dice": s["liver_dice_global"],
                  "lesion_dice": s["lesion_dice_global"], "lesion_precision": s["lesion_precision_pooled"],
                  "lesion_recall": s["lesion_recall_pooled"],
                  "notes": "Dice = 2 sum|P&R| / (sum|P| + sum|R|) over all cases; precision/recall pooled"}
    return [mean_row, global_row]


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write atomically: a reader never sees half a file, and a failure leaves any old file untouched."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(_CSV_COLUMNS)
            for row in rows:
                writer.writerow([_csv_value(row.get(c)) for c in _CSV_COLUMNS])
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_TABLE = (  # (column, header, format)
    ("liver_dice", "liv.dice", ".4f"), ("liver_voe", "liv.voe", ".4f"), ("liver_rvd", "liv.rvd", "+.4f"),
    ("liver_assd", "liv.assd", ".2f"), ("liver_mssd", "liv.mssd", ".2f"),
    ("lesion_dice", "les.dice", ".4f"), ("lesion_voe", "les.voe", ".4f"), ("lesion_rvd", "les.rvd", "+.4f"),
    ("lesion_assd", "les.assd", ".2f"), ("lesion_mssd", "les.mssd", ".2f"),
    ("lesion_precision", "les.prec", ".3f"), ("lesion_recall", "les.rec", ".3f"),
)


def _format_table(rows: list[dict[str, Any]]) -> str:
    cells = [["case", *(h for _, h, _ in _TABLE)]]
    for row in rows:
        line = [str(row["case"])]
        for key, _, fmt in _TABLE:
            v = row.get(key)
            line.append("-" if v is None else "n/a" if isinstance(v, float) and math.isnan(v) else format(v, fmt))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    # case names left-aligned, numbers right-aligned
    lines = [[c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
             for r in cells]
    return "\n".join("  ".join(line) for line in lines)


def run(args: argparse.Namespace) -> int:
    """Evaluate every (prediction, reference) pair, write the CSV if asked and print the table."""
    pairs = _pairs_from_args(args)
    for who in ("gt", "pred"):
        _labels_for(args, who)  # option errors before any reading
    if not 0.0 <= args.min_overlap < 1.0:
        raise InputError(f"--min-overlap must be in [0, 1), got {args.min_overlap}")
    _check_output(args.output, args.overwrite)
    for pred_path, gt_path in pairs:
        for kind, path in (("prediction", pred_path), ("reference", gt_path)):
            if not path.exists():
                raise InputError(f"{kind} file not found: {path}")
    rows = _evaluate_pairs(pairs, args)
    rows += _summary_rows(rows)
    if args.output is not None:
        if args.output.exists() and not args.overwrite:  # appeared while we were computing
            raise OutputExistsError(f"output {args.output} already exists; pass --overwrite to replace it")
        _write_csv(args.output, rows)
    print(_format_table(rows))
    print(rows[-2]["notes"])  # the mean row's note: how many cases, which values were skipped
    if args.output is not None:
        print(f"wrote {args.output}")
    return 0
