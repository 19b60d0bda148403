"""The organ vocabulary of multi-organ label maps used for training (synthetic CT, hard negatives).

Every multi-organ source (3D-IRCADb per-organ DICOM masks, TotalSegmentator maps, label-driven synthetic CT) is
brought to these uint8 values, so that the synthesiser and the hard-negative sampling speak one language. Values 1
and 2 are the segmentation classes themselves (liver, lesion) so a map can be turned into a training label with
:func:`to_training_label`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["ORGANS", "ORGAN_NAMES", "HARD_NEGATIVE_ORGANS", "HARD_NEGATIVE_LABEL", "IGNORE_LABEL", "to_training_label",
           "hard_negative_mask", "hard_negative_organs", "is_liver"]

#: name -> value. 0 is outside the body (air); BODY is tissue inside the skin not covered by another structure.
ORGANS: dict[str, int] = {
    "background": 0,
    "liver": 1,
    "lesion": 2,  # liver tumours, metastases, cysts
    "body": 3,  # inside the skin, no other label (fat / muscle are painted by the synthesiser)
    "spleen": 4,
    "kidney": 5,
    "stomach": 6,
    "pancreas": 7,
    "gallbladder": 8,
    "portal_vein": 9,  # portal and splenic/mesenteric veins
    "vena_cava": 10,  # inferior vena cava and hepatic veins ("venous system")
    "aorta": 11,  # aorta and arteries
    "bone": 12,
    "lung": 13,
    "heart": 14,
    "bowel": 15,  # small bowel, duodenum, colon, oesophagus
    "adrenal": 16,
    "muscle": 17,
    "fat": 18,
    "bladder": 19,
    "other": 20,  # any other labelled soft tissue
}
ORGAN_NAMES: dict[int, str] = {v: k for k, v in ORGANS.items()}

#: Organs whose CT values overlap the liver's in some phase and that sit next to it: a coarse model must learn to
#: say "not liver" there (weighted up in the loss through :data:`HARD_NEGATIVE_LABEL`).
HARD_NEGATIVE_ORGANS: tuple[int, ...] = tuple(ORGANS[n] for n in (
    "spleen", "kidney", "stomach", "pancreas", "heart", "muscle", "bowel", "adrenal", "vena_cava", "aorta"))

#: A training-label value meaning "background, and a hard one": the loss treats it as class 0 with extra weight.
HARD_NEGATIVE_LABEL = 3

#: A training-label value meaning "no supervision here" (an uncertain pseudo-label voxel): the weighted
#: cross-entropy gives it weight 0; the other losses refuse it.
IGNORE_LABEL = 255


def hard_negative_organs(extra: Iterable[str] = ()) -> tuple[int, ...]:
    """:data:`HARD_NEGATIVE_ORGANS` plus the organs named in ``extra`` (names of :data:`ORGANS`).

    Raises:
        ValueError: a name that is not an organ, or one that is the liver or its lesions.
    """
    out = list(HARD_NEGATIVE_ORGANS)
    for name in extra:
        if name not in ORGANS:
            raise ValueError(f"unknown organ {name!r} (known: {', '.join(sorted(ORGANS))})")
        if name in ("liver", "lesion", "background"):
            raise ValueError(f"{name!r} cannot be a hard negative")
        if ORGANS[name] not in out:
            out.append(ORGANS[name])
    return tuple(out)


def to_training_label(organ_map: np.ndarray, with_lesion: bool = True, hard_negatives: bool = False,
                      negative_organs: tuple[int, ...] = HARD_NEGATIVE_ORGANS) -> np.ndarray:
    """The segmentation label of an organ map: 0 background, 1 liver, 2 lesion (or 1 when ``with_lesion`` is False).

    With ``hard_negatives``, voxels of ``negative_organs`` (default :data:`HARD_NEGATIVE_ORGANS`) get
    :data:`HARD_NEGATIVE_LABEL`.
    """
    organ_map = np.asarray(organ_map)
    out = np.zeros(organ_map.shape, np.uint8)
    out[organ_map == ORGANS["liver"]] = 1
    out[organ_map == ORGANS["lesion"]] = 2 if with_lesion else 1
    if hard_negatives:
        out[hard_negative_mask(organ_map, negative_organs)] = HARD_NEGATIVE_LABEL
    return out


def is_liver(label: np.ndarray) -> np.ndarray:
    """Liver (including lesions) of a training label that may hold :data:`HARD_NEGATIVE_LABEL`."""
    return (label == 1) | (label == 2)


def hard_negative_mask(organ_map: np.ndarray, negative_organs: tuple[int, ...] = HARD_NEGATIVE_ORGANS) -> np.ndarray:
    """Boolean mask of the hard-negative organs (default :data:`HARD_NEGATIVE_ORGANS`) of ``organ_map``."""
    return np.isin(np.asarray(organ_map), negative_organs)
