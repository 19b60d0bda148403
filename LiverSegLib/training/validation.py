"""Validation during training: the stage's own inference code on whole validation cases, Dice per class."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from LiverSegLib.config import StageConfig
from LiverSegLib.pipeline.stage import StageModel, normalize_input
from LiverSegLib.training.cases import PreparedCase
from LiverSegLib.training.organs import HARD_NEGATIVE_LABEL

__all__ = ["dice", "validate_cases", "mean_dice"]


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty (no evidence either way)."""
    a, b = int(pred.sum()), int(ref.sum())
    if a + b == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(pred, ref).sum()) / (a + b)


@torch.no_grad()
def validate_cases(net: nn.Module, stage: StageConfig, cases: list[PreparedCase], device: torch.device,
                   liver_slices_only: bool = False) -> list[dict]:
    """Run ``net`` as the predictor would (same normalisation, batching, padding) on each case's stage grid.

    Args:
        net: the network (its train/eval mode is restored afterwards).
        stage: its stage config.
        cases: validation cases.
        device: where to run.
        liver_slices_only: evaluate the slices holding liver (plus the 2.5D context) only, as Han's fine model
            only ever sees the liver box.

    Returns:
        One row per case: ``case``, ``dice_liver`` (liver including lesions, as LiTS scores it) and, for a lesion
        stage, ``dice_lesion``.
    """
    was_training = net.training
    model = StageModel.from_network(stage, net, device)
    rows = []
    try:
        for case in cases:
            label = np.asarray(case.label)
            label = np.where(label == HARD_NEGATIVE_LABEL, 0, label)  # hard negatives are background
            z = np.arange(label.shape[0])
            if liver_slices_only:
                has = np.nonzero(label.reshape(label.shape[0], -1).any(axis=1))[0]
                if len(has):
                    z = np.arange(has.min(), has.max() + 1)
            image = normalize_input(np.array(case.image, dtype=np.float32), stage)
            out = model.predict(image, z)
            ref = label[z]
            fg = out.foreground.astype(np.float32)
            is_fg = fg >= 0.5
            row = {"case": case.name, "dice_liver": dice(is_fg, ref > 0)}
            if out.lesion is not None:
                les = out.lesion.astype(np.float32)
                row["dice_lesion"] = dice(is_fg & (les > fg - les), ref == 2)
            rows.append(row)
    finally:
        net.train(was_training)
    return rows


def mean_dice(rows: list[dict]) -> dict[str, float]:
    """Mean of each Dice column over the cases where it is defined (NaN when never defined)."""
    out = {}
    for key in ("dice_liver", "dice_lesion"):
        vals = [r[key] for r in rows if key in r and not math.isnan(r[key])]
        if any(key in r for r in rows):
            out[key] = float(np.mean(vals)) if vals else float("nan")
    return out
