"""Data types shared by every part of LiverSegLib.

Axis order is carried by field names: ``array_zyx`` is indexed ``[k, j, i]`` (slice, row, column) while
``spacing_xyz`` and ``origin_xyz`` are given in ``(i, j, k)`` order. Patient coordinates are LPS
(DICOM/ITK convention); the Slicer side converts to RAS at its boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Volume", "LesionRecord", "LabelInfo", "SegmentationResult", "LIVER_LABEL", "LESION_LABEL"]

LIVER_LABEL = 1
LESION_LABEL = 2


@dataclass(frozen=True)
class Volume:
    """A 3D image on a regular grid with its patient-space geometry.

    Args:
        array_zyx: voxel values indexed ``[k, j, i]``.
        spacing_xyz: voxel size in mm along the image axes ``i, j, k``.
        origin_xyz: LPS position (mm) of the centre of voxel ``(0, 0, 0)``.
        direction: 3x3 matrix whose columns are the unit vectors of the image axes ``i, j, k`` in LPS.
        metadata: free-form information about where the volume came from (format, path, modality ...).
    """

    array_zyx: np.ndarray
    spacing_xyz: tuple[float, float, float]
    origin_xyz: tuple[float, float, float]
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array_zyx.ndim != 3:
            raise ValueError(f"array_zyx must be 3D, got shape {self.array_zyx.shape}")
        direction = np.asarray(self.direction, dtype=np.float64)
        if direction.shape != (3, 3):
            raise ValueError(f"direction must be 3x3, got shape {direction.shape}")
        object.__setattr__(self, "direction", direction)
        object.__setattr__(self, "spacing_xyz", tuple(float(s) for s in self.spacing_xyz))
        object.__setattr__(self, "origin_xyz", tuple(float(o) for o in self.origin_xyz))
        if any(not np.isfinite(s) or s <= 0 for s in self.spacing_xyz):
            raise ValueError(f"spacing_xyz must be positive and finite, got {self.spacing_xyz}")

    @property
    def shape_xyz(self) -> tuple[int, int, int]:
        """Grid size in ``(i, j, k)`` order."""
        k, j, i = self.array_zyx.shape
        return int(i), int(j), int(k)

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres."""
        return float(np.prod(self.spacing_xyz)) / 1000.0

    def index_to_physical_matrix(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous ``(i, j, k, 1)`` to LPS ``(x, y, z, 1)`` in mm."""
        m = np.eye(4)
        m[:3, :3] = self.direction @ np.diag(self.spacing_xyz)
        m[:3, 3] = self.origin_xyz
        return m

    def index_to_physical(self, ijk: np.ndarray) -> np.ndarray:
        """Map ``(..., 3)`` continuous indices in ``(i, j, k)`` order to LPS mm."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ (self.direction @ np.diag(self.spacing_xyz)).T + np.asarray(self.origin_xyz)

    def with_array(self, array_zyx: np.ndarray, **metadata: Any) -> Volume:
        """A volume on the same grid holding ``array_zyx`` (e.g. a labelmap)."""
        if array_zyx.shape != self.array_zyx.shape:
            raise ValueError(f"shape {array_zyx.shape} differs from the grid {self.array_zyx.shape}")
        return Volume(array_zyx, self.spacing_xyz, self.origin_xyz, self.direction, {**self.metadata, **metadata})

    def same_grid(self, other: Volume, atol: float = 1e-4) -> bool:
        """True when ``other`` lies on exactly this grid (shape, spacing, origin, direction)."""
        return (
            self.array_zyx.shape == other.array_zyx.shape
            and np.allclose(self.spacing_xyz, other.spacing_xyz, atol=atol)
            and np.allclose(self.origin_xyz, other.origin_xyz, atol=atol)
            and np.allclose(self.direction, other.direction, atol=atol)
        )


@dataclass(frozen=True)
class LabelInfo:
    """One label value of a labelmap with its name, colour and SNOMED CT terminology."""

    value: int
    name: str
    color_rgb: tuple[float, float, float]
    terminology: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form used by ``models.json`` and ``summary.json``."""
        return {"value": self.value, "name": self.name, "color_rgb": list(self.color_rgb),
                "terminology": self.terminology}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelInfo:
        return cls(int(d["value"]), d["name"], tuple(float(c) for c in d["color_rgb"]), dict(d["terminology"]))


@dataclass(frozen=True)
class LesionRecord:
    """One connected lesion kept after pruning.

    ``centroid_lps`` is in patient LPS mm; ``max_diameter_mm`` is the largest distance between two voxel
    centres of the lesion's surface (3D Feret diameter).
    """

    lesion_id: int
    voxels: int
    volume_ml: float
    max_diameter_mm: float
    centroid_lps: tuple[float, float, float]
    mean_hu: float
    max_probability: float

    def as_row(self) -> dict[str, Any]:
        """Flat dict for CSV/JSON output."""
        x, y, z = self.centroid_lps
        return {
            "id": self.lesion_id,
            "voxels": self.voxels,
            "volume_ml": round(self.volume_ml, 4),
            "max_diameter_mm": round(self.max_diameter_mm, 2),
            "centroid_x_lps_mm": round(x, 2),
            "centroid_y_lps_mm": round(y, 2),
            "centroid_z_lps_mm": round(z, 2),
            "mean_hu": round(self.mean_hu, 1),
            "max_probability": round(self.max_probability, 4),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> LesionRecord:
        """The record of an :meth:`as_row` dict, or of a ``lesions.csv`` row (strings); values as rounded there."""
        return cls(lesion_id=int(row["id"]), voxels=int(row["voxels"]), volume_ml=float(row["volume_ml"]),
                   max_diameter_mm=float(row["max_diameter_mm"]),
                   centroid_lps=(float(row["centroid_x_lps_mm"]), float(row["centroid_y_lps_mm"]),
                                 float(row["centroid_z_lps_mm"])),
                   mean_hu=float(row["mean_hu"]), max_probability=float(row["max_probability"]))

    @classmethod
    def columns(cls) -> list[str]:
        """The keys of :meth:`as_row`, in order (the ``lesions.csv`` header)."""
        return list(cls(0, 0, 0.0, 0.0, (0.0, 0.0, 0.0), 0.0, 0.0).as_row())


@dataclass
class SegmentationResult:
    """What :func:`LiverSegLib.segment` returns.

    Attributes:
        labelmap: uint8 volume on the input grid (0 background, 1 liver, 2 lesion).
        labels: the label table (value, name, colour, terminology) for values present in the model.
        lesions: kept lesions, largest first.
        liver_volume_ml: volume of the final liver including its lesions.
        lesion_volume_ml: total volume of kept lesions.
        model_id / model_version: which model produced the result.
        timings_s: wall time per stage in seconds.
        warnings: non-fatal findings (e.g. intensities that do not look like CT, a box fallback).
        details: extra facts about the run (device, box, pruned lesion count ...).
    """

    labelmap: Volume
    labels: list[LabelInfo]
    lesions: list[LesionRecord]
    liver_volume_ml: float
    lesion_volume_ml: float
    model_id: str
    model_version: str
    timings_s: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def tumour_burden_percent(self) -> float:
        """Lesion volume as a percentage of the liver volume (0 when no liver was found)."""
        return 100.0 * self.lesion_volume_ml / self.liver_volume_ml if self.liver_volume_ml > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (no arrays)."""
        return {
            "model": {"id": self.model_id, "version": self.model_version},
            "liver_volume_ml": round(self.liver_volume_ml, 3),
            "lesion_count": len(self.lesions),
            "lesion_volume_ml": round(self.lesion_volume_ml, 3),
            "tumour_burden_percent": round(self.tumour_burden_percent, 3),
            "labels": [lb.to_dict() for lb in self.labels],
            "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()},
            "warnings": list(self.warnings),
            "details": self.details,
        }
