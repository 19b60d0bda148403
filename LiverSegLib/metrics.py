"""LiTS evaluation: overlap and surface metrics for liver and lesions, lesion detection, and dataset totals.

Conventions (made explicit because libraries disagree on them):

* Masks are compared voxel-wise on one grid; ``spacing_zyx`` is the voxel size in mm along the array axes
  ``(0, 1, 2)`` (i.e. ``reversed(Volume.spacing_xyz)``) so that distances are in mm.
* Empty masks: both empty gives dice 1, voe 0, rvd 0 and distances 0 (a perfect "nothing there"). When only
  one is empty, dice is 0 and voe 1; rvd is ``+inf`` when the reference is empty (relative to nothing) and
  ``-1`` when the prediction is empty; assd/mssd are NaN (no surface to measure to). :func:`summarize`
  skips non-finite values and reports how many it skipped.
* Label maps use 0 background, 1 liver, 2 lesion; the liver is ``labels >= 1`` (liver including its lesions,
  as in LiTS) and the lesion is ``labels == 2``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import cc3d
import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

__all__ = ["segmentation_scores", "lesion_detection", "evaluate_case", "summarize", "CASE_METRICS", "COUNT_KEYS"]

_SEG_METRICS = ("dice", "voe", "rvd", "assd", "mssd")
_COUNTS = ("intersection", "pred_voxels", "ref_voxels")

#: per-case metric keys of :func:`evaluate_case` that :func:`summarize` averages
CASE_METRICS: tuple[str, ...] = (
    *(f"liver_{m}" for m in _SEG_METRICS),
    *(f"lesion_{m}" for m in _SEG_METRICS),
    "lesion_precision",
    "lesion_recall",
)
#: per-case integer counts of :func:`evaluate_case` that :func:`summarize` adds up
COUNT_KEYS: tuple[str, ...] = (
    "lesion_tp",
    "lesion_fp",
    "lesion_fn",
    "n_ref_lesions",
    "n_pred_lesions",
    *(f"liver_{c}" for c in _COUNTS),
    *(f"lesion_{c}" for c in _COUNTS),
)


def _check_pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if pred.ndim != 3:
        raise ValueError(f"expected 3D masks, got shape {pred.shape}")
    return pred, ref


def _surface_distances(pred: np.ndarray, ref: np.ndarray, spacing_zyx: Sequence[float]) -> tuple[float, float]:
    """Symmetric average and maximum surface distance (mm) of two non-empty boolean masks via MONAI."""
    # MONAI wants (batch, channel, *spatial); from_numpy on bool arrays shares memory, so no copy is made.
    p = torch.from_numpy(np.ascontiguousarray(pred))[None, None]
    r = torch.from_numpy(np.ascontiguousarray(ref))[None, None]
    spacing = [float(s) for s in spacing_zyx]  # MONAI applies spacing in array-axis order: exactly zyx here
    with warnings.catch_warnings():
        # monai 1.5-1.6 passes its own deprecated ``always_return_as_numpy`` argument internally; not ours to fix
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
        # symmetric=True averages over the union of both surfaces' distances, which is the LiTS ASSD
        assd = compute_average_surface_distance(p, r, include_background=True, symmetric=True, spacing=spacing)
        # percentile=None and directed=False: the symmetric maximum, i.e. the 100% Hausdorff distance (MSSD)
        mssd = compute_hausdorff_distance(p, r, include_background=True, spacing=spacing)
    return float(assd.item()), float(mssd.item())


def segmentation_scores(
    pred: np.ndarray, ref: np.ndarray, spacing_zyx: tuple[float, float, float]
) -> dict[str, float]:
    """LiTS overlap and surface scores of one binary mask against a reference.

    Args:
        pred: predicted mask (any dtype; non-zero is foreground), indexed like ``ref``.
        ref: reference mask of the same shape.
        spacing_zyx: voxel size in mm along array axes 0, 1, 2.

    Returns:
        ``dice``, ``voe`` (1 - Jaccard), ``rvd`` ((|P| - |R|) / |R|, positive when over-segmenting),
        ``assd`` and ``mssd`` (average and maximum symmetric surface distance, mm), plus the raw voxel counts
        ``intersection``, ``pred_voxels`` and ``ref_voxels`` used for global Dice. Empty masks follow the
        module conventions: both empty -> 1, 0, 0, 0, 0; one empty -> dice 0, voe 1, rvd ``inf`` (empty
        reference) or ``-1`` (empty prediction), distances NaN.

    Raises:
        ValueError: when the shapes differ, the masks are not 3D or the spacing is not three positive numbers.
    """
    pred, ref = _check_pair(pred, ref)
    if len(spacing_zyx) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing_zyx):
        raise ValueError(f"spacing_zyx must be three positive numbers, got {spacing_zyx}")
    p, r = pred != 0, ref != 0
    n_p, n_r = int(np.count_nonzero(p)), int(np.count_nonzero(r))
    inter = int(np.count_nonzero(p & r))
    counts = {"intersection": inter, "pred_voxels": n_p, "ref_voxels": n_r}
    if n_p == 0 and n_r == 0:
        return {"dice": 1.0, "voe": 0.0, "rvd": 0.0, "assd": 0.0, "mssd": 0.0, **counts}
    # Dice/VOE come straight from the counts (which global Dice needs anyway); MONAI's compute_dice with
    # ignore_empty=False gives the same numbers but would first copy both volumes to float tensors.
    union = n_p + n_r - inter
    scores = {
        "dice": 2.0 * inter / (n_p + n_r),
        "voe": 1.0 - inter / union,
        "rvd": (n_p - n_r) / n_r if n_r else math.inf,
    }
    if n_p == 0 or n_r == 0:
        # MONAI returns inf here (or NaN when both are empty); NaN says "not computable" so totals skip it
        scores.update(assd=math.nan, mssd=math.nan)
    else:
        scores["assd"], scores["mssd"] = _surface_distances(p, r, spacing_zyx)
    return {**scores, **counts}


def lesion_detection(pred_lesion: np.ndarray, ref_lesion: np.ndarray, min_overlap: float = 0.0) -> dict[str, Any]:
    """Lesion-wise detection counts from 3D connected components (26-connectivity).

    A predicted component *matches* a reference lesion when they share more than ``min_overlap`` times the
    reference lesion's voxel count (with the default 0: any shared voxel). A reference lesion with at least
    one match is detected; a predicted component without any match is a false positive.

    Args:
        pred_lesion: predicted lesion mask (non-zero is lesion).
        ref_lesion: reference lesion mask of the same shape.
        min_overlap: fraction in ``[0, 1)`` of the reference lesion that one component must cover.

    Returns:
        ``n_ref``, ``n_pred`` (component counts), ``tp`` (detected reference lesions), ``fn`` (missed ones),
        ``tp_pred`` (predicted components that match), ``fp`` (those that match nothing),
        ``precision = tp_pred / n_pred`` (NaN when nothing is predicted) and ``recall = tp / n_ref``
        (NaN when the reference has no lesion). ``tp`` and ``tp_pred`` differ when one component covers
        several lesions or one lesion is split.

    Raises:
        ValueError: when the shapes differ or ``min_overlap`` is outside ``[0, 1)``.
    """
    pred_lesion, ref_lesion = _check_pair(pred_lesion, ref_lesion)
    if not 0.0 <= min_overlap < 1.0:
        raise ValueError(f"min_overlap must be in [0, 1), got {min_overlap}")
    ref_cc, n_ref = cc3d.connected_components(ref_lesion != 0, connectivity=26, return_N=True)
    pred_cc, n_pred = cc3d.connected_components(pred_lesion != 0, connectivity=26, return_N=True)
    n_ref, n_pred = int(n_ref), int(n_pred)
    both = (ref_cc > 0) & (pred_cc > 0)
    # Count shared voxels per (reference, predicted) component pair in one pass over the overlap only.
    pairs = ref_cc[both].astype(np.int64) * (n_pred + 1) + pred_cc[both].astype(np.int64)
    keys, shared = np.unique(pairs, return_counts=True)
    ref_ids, pred_ids = keys // (n_pred + 1), keys % (n_pred + 1)
    ref_sizes = np.bincount(ref_cc.ravel(), minlength=n_ref + 1)
    match = shared > min_overlap * ref_sizes[ref_ids]
    tp = len(np.unique(ref_ids[match]))
    tp_pred = len(np.unique(pred_ids[match]))
    return {
        "n_ref": n_ref,
        "n_pred": n_pred,
        "tp": tp,
        "fn": n_ref - tp,
        "tp_pred": tp_pred,
        "fp": n_pred - tp_pred,
        "precision": tp_pred / n_pred if n_pred else math.nan,
        "recall": tp / n_ref if n_ref else math.nan,
    }


def evaluate_case(
    pred_labels: np.ndarray, ref_labels: np.ndarray, spacing_zyx: tuple[float, float, float],
    min_overlap: float = 0.0,
) -> dict[str, float]:
    """All LiTS metrics of one case from two label maps (0 background, 1 liver, 2 lesion).

    Args:
        pred_labels: predicted label map.
        ref_labels: reference label map of the same shape.
        spacing_zyx: voxel size in mm along array axes 0, 1, 2.
        min_overlap: passed to :func:`lesion_detection`.

    Returns:
        A flat dict: ``liver_*`` and ``lesion_*`` for each of dice, voe, rvd, assd, mssd, intersection,
        pred_voxels, ref_voxels (liver = labels >= 1, lesion = labels == 2); ``lesion_precision``,
        ``lesion_recall``, ``lesion_tp`` (detected reference lesions), ``lesion_fp``, ``lesion_fn``,
        ``n_ref_lesions`` and ``n_pred_lesions``.

    Raises:
        ValueError: when the shapes differ.
    """
    pred_labels, ref_labels = _check_pair(pred_labels, ref_labels)
    out: dict[str, float] = {}
    for name, p, r in (
        ("liver", pred_labels >= 1, ref_labels >= 1),
        ("lesion", pred_labels == 2, ref_labels == 2),
    ):
        out.update({f"{name}_{k}": v for k, v in segmentation_scores(p, r, spacing_zyx).items()})
    det = lesion_detection(pred_labels == 2, ref_labels == 2, min_overlap)
    out.update(
        lesion_precision=det["precision"],
        lesion_recall=det["recall"],
        lesion_tp=det["tp"],
        lesion_fp=det["fp"],
        lesion_fn=det["fn"],
        n_ref_lesions=det["n_ref"],
        n_pred_lesions=det["n_pred"],
    )
    return out


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def summarize(cases: list[dict[str, float]]) -> dict[str, Any]:
    """Dataset totals of :func:`evaluate_case` results.

    Args:
        cases: one dict per case as returned by :func:`evaluate_case`.

    Returns:
        ``n_cases``; ``mean``: per metric of :data:`CASE_METRICS`, the mean over cases with a finite value
        (NaN when none); ``n_skipped``: per metric, how many cases were left out as NaN/inf; ``sum``: the
        totals of :data:`COUNT_KEYS`; ``liver_dice_per_case`` / ``lesion_dice_per_case`` (the mean Dice) and
        ``liver_dice_global`` / ``lesion_dice_global`` (LiTS: ``2 sum|P & R| / (sum|P| + sum|R|)`` over all
        cases, 1 when every mask is empty); ``lesion_precision_pooled`` and ``lesion_recall_pooled`` from the
        summed detection counts (NaN when nothing was predicted / nothing was there).

    Raises:
        ValueError: when ``cases`` is empty.
    """
    if not cases:
        raise ValueError("summarize needs at least one case")
    mean: dict[str, float] = {}
    skipped: dict[str, int] = {}
    for key in CASE_METRICS:
        values = np.array([c[key] for c in cases], dtype=np.float64)
        finite = values[np.isfinite(values)]
        mean[key] = float(finite.mean()) if finite.size else math.nan
        skipped[key] = int(values.size - finite.size)
    total = {key: sum(int(c[key]) for c in cases) for key in COUNT_KEYS}
    out: dict[str, Any] = {"n_cases": len(cases), "mean": mean, "n_skipped": skipped, "sum": total}
    for name in ("liver", "lesion"):
        out[f"{name}_dice_per_case"] = mean[f"{name}_dice"]
        den = total[f"{name}_pred_voxels"] + total[f"{name}_ref_voxels"]
        # same empty convention as per case: nothing anywhere in either is a perfect agreement
        out[f"{name}_dice_global"] = 2.0 * total[f"{name}_intersection"] / den if den else 1.0
    n_pred = total["n_pred_lesions"]
    out["lesion_precision_pooled"] = _ratio(n_pred - total["lesion_fp"], n_pred)
    out["lesion_recall_pooled"] = _ratio(total["lesion_tp"], total["n_ref_lesions"])
    return out
