"""Plausibility guard on a finished segmentation: liver volume and lesion burden outside what a body holds.

A network that sees something it was not trained for (an MR series, a head CT, a non-contrast scan, another
organ filling the field of view) still returns a labelmap. These checks turn the most obvious of those failures
into a one-line warning in the result (``summary.json``, the CLI's stderr, the Slicer node and log) instead of
letting a plausible-looking number through. They never change the labelmap.
"""

from __future__ import annotations

import numpy as np

from LiverSegLib.config import CascadeConfig
from LiverSegLib.types import LESION_LABEL, LIVER_LABEL

__all__ = ["plausibility_warnings"]

_CHECK = "check the segmentation (the scan may not be a contrast CT of the abdomen, or the model failed)"


def plausibility_warnings(labels_zyx: np.ndarray, spacing_xyz: tuple[float, ...],
                          cascade: CascadeConfig) -> list[str]:
    """Warnings for a labelmap whose liver volume or lesion burden lies outside the cascade's plausible bounds.

    The bounds are inclusive: exactly ``plausible_liver_l[0]`` L, or exactly ``max_lesion_burden_percent`` %,
    does not warn.

    Args:
        labels_zyx: the final labelmap (0 background, 1 liver, 2 lesion) with the axial slices along axis 0 (the
            canonical grid), so that "the first/last slice" means the ends of the scan range.
        spacing_xyz: its voxel spacing in mm.
        cascade: holds ``plausible_liver_l`` and ``max_lesion_burden_percent``.

    Returns:
        Zero, one or two one-line warnings.
    """
    liver = labels_zyx >= LIVER_LABEL  # the whole organ: parenchyma and lesions
    liver_voxels = int(np.count_nonzero(liver))
    lesion_voxels = int(np.count_nonzero(labels_zyx == LESION_LABEL))
    liver_l = liver_voxels * float(np.prod(spacing_xyz)) / 1e6  # divide last: a round volume stays exact at a bound
    low, high = cascade.plausible_liver_l
    bounds = f"the plausible {low:g}-{high:g} L"
    warnings = []
    if liver_voxels == 0:
        warnings.append(f"no liver was segmented (0 L, outside {bounds}): {_CHECK}")
    elif liver_l < low or liver_l > high:
        message = f"liver volume {_litres(liver_l, low, high)} L is outside {bounds}: "
        # A scan range that stops inside the liver legitimately holds less of it: say so rather than cry failure.
        if liver_l < low and (liver[0].any() or liver[-1].any()):
            message += (f"the liver touches the first/last slice, so the field of view may cut it; otherwise "
                        f"{_CHECK}")
        else:
            message += _CHECK
        warnings.append(message)
    if liver_voxels:
        burden = 100.0 * lesion_voxels / liver_voxels
        if burden > cascade.max_lesion_burden_percent:
            warnings.append(f"lesion burden {burden:.1f} % of the liver is over the plausible "
                            f"{cascade.max_lesion_burden_percent:g} %: check the lesions (the model may be labelling "
                            f"liver parenchyma or other tissue as lesion)")
    return warnings


def _litres(value: float, low: float, high: float) -> str:
    """``value`` with two decimals, or as many more as it takes not to print a number inside ``[low, high]``."""
    for digits in (2, 3, 4):
        text = f"{value:.{digits}f}"
        if not low <= float(text) <= high:
            return text
    return f"{value:.6g}"
