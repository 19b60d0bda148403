"""Frozen configuration of a model: its stages, preprocessing and cascade.

A :class:`ModelConfig` is built from one entry of ``Resources/models.json`` (or from a self-describing
checkpoint) and is the *only* source of behaviour differences between models: nothing is ever inferred from
a file name. Importing this module does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from LiverSegLib._paths import resources_dir
from LiverSegLib.errors import ModelError
from LiverSegLib.types import LabelInfo

__all__ = ["DEVICES", "RUNTIMES", "PRECISIONS", "SURFACE_FORMATS", "NORMALIZATIONS", "NetworkSpec", "OnnxExport",
           "StageConfig", "CascadeConfig",
           "ModelConfig", "TERMINOLOGY", "default_labels"]

#: Where a model may run; "auto" takes CUDA when torch sees a GPU.
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
#: What executes the networks: "auto" = OpenVINO on the CPU for stages with an ONNX export (when installed), torch
#: otherwise; "torch" always; "openvino" / "onnxruntime" where a stage has an export (torch for the others).
RUNTIMES: tuple[str, ...] = ("auto", "torch", "openvino", "onnxruntime")
#: Arithmetic of the ONNX engines on the CPU: "auto" = bfloat16 where the CPU has it natively (OpenVINO), "fp32",
#: "bf16". torch always runs float32 on the CPU (float16 autocast on CUDA).
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
#: Closed-surface file formats the writer offers.
SURFACE_FORMATS: tuple[str, ...] = ("stl", "obj")

NORMALIZATIONS = ("window", "histeq")

# SNOMED CT codes as used by Slicer's terminology and Slicer-Liver (shared/DESIGN.md).
TERMINOLOGY: dict[str, dict[str, Any]] = {
    "Liver": {
        "category": {"scheme": "SCT", "code": "123037004", "meaning": "Anatomical Structure"},
        "type": {"scheme": "SCT", "code": "10200004", "meaning": "Liver"},
    },
    "Liver lesion": {
        "category": {"scheme": "SCT", "code": "49755003", "meaning": "Morphologically Altered Structure"},
        "type": {"scheme": "SCT", "code": "108369006", "meaning": "Neoplasm"},
        "region": {"scheme": "SCT", "code": "10200004", "meaning": "Liver"},
    },
}


def default_labels() -> list[LabelInfo]:
    """The label table of a liver + lesion model (values 1 and 2) with colours from Slicer's terminology."""
    return [
        LabelInfo(1, "Liver", (0.867, 0.510, 0.396), TERMINOLOGY["Liver"]),
        LabelInfo(2, "Liver lesion", (0.886, 0.329, 0.208), TERMINOLOGY["Liver lesion"]),
    ]


@dataclass(frozen=True)
class NetworkSpec:
    """Which network class to build and with which keyword arguments."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": dict(self.kwargs)}


@dataclass(frozen=True)
class OnnxExport:
    """A stage network exported to ONNX (network + softmax; dynamic batch and slice size), run by an ONNX engine.

    Args:
        file: the ``.onnx`` file, named like ``StageConfig.weights``.
        sha256: its checksum; the file is refused when it differs.
        size_multiple: slice sides must be multiples of this (the engine's input is padded with air to it).
    """

    file: str
    sha256: str
    size_multiple: int = 1

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OnnxExport:
        return cls(file=str(d["file"]), sha256=str(d["sha256"]), size_multiple=int(d.get("size_multiple", 1)))

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "size_multiple": self.size_multiple}


@dataclass(frozen=True)
class StageConfig:
    """One network of the cascade and how its input is prepared.

    Args:
        network: the network class and its arguments.
        weights: weight file name (relative to ``Resources/weights``) or an absolute path.
        sha256: expected checksum of the weight file; the file is refused when it differs.
        classes: label value predicted by each output channel, e.g. ``[0, 1]`` (liver, lesion merged)
            or ``[0, 1, 2]``.
        hu_window: intensities are clipped to this HU range and scaled to [-1, 1].
        spacing_xyz: grid the stage runs on in mm; ``None`` for an axis keeps the native spacing.
        context_slices: number of adjacent axial slices given as channels (Han: 5; 1 for a 2D or 3D network).
        normalization: ``"window"`` (clip to ``hu_window``, scale to [-1, 1]; Han, Yang) or ``"histeq"`` (clip, then
            histogram-equalise each axial slice and scale to [-1, 1]; the Mixed U-Net's preprocessing).
        batch_cpu / batch_cuda: slices per forward pass on each kind of device.
        onnx: the network exported for the ONNX engines (2D/2.5D stages; ``None``: torch runs the stage).
    """

    network: NetworkSpec
    weights: str
    sha256: str
    classes: tuple[int, ...]
    hu_window: tuple[float, float]
    spacing_xyz: tuple[float | None, float | None, float | None] = (None, None, None)
    context_slices: int = 5
    batch_cpu: int = 8
    batch_cuda: int = 64
    normalization: str = "window"
    onnx: OnnxExport | None = None

    @property
    def members(self) -> int:
        """How many networks the stage runs: ``count`` of a ``MeanEnsemble``, else 1."""
        if self.network.name == "MeanEnsemble":
            return int(self.network.kwargs.get("count", 1))
        return 1

    def __post_init__(self) -> None:
        if self.hu_window[0] >= self.hu_window[1]:
            raise ModelError(f"hu_window must be increasing, got {list(self.hu_window)}")
        if self.context_slices < 1 or self.context_slices % 2 == 0:
            raise ModelError(f"context_slices must be odd and positive, got {self.context_slices}")
        if 0 not in self.classes or len(set(self.classes)) != len(self.classes):
            raise ModelError(f"classes must list distinct label values including 0, got {list(self.classes)}")
        if self.normalization not in NORMALIZATIONS:
            raise ModelError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {self.normalization!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageConfig:
        pre = d.get("preprocessing", {})
        return cls(
            network=NetworkSpec(d["network"]["name"], dict(d["network"].get("kwargs", {}))),
            weights=d["weights"],
            sha256=d["sha256"],
            classes=tuple(int(c) for c in d["classes"]),
            hu_window=(float(pre["hu_window"][0]), float(pre["hu_window"][1])),
            spacing_xyz=tuple(None if s is None else float(s) for s in pre.get("spacing_xyz", (None, None, None))),
            context_slices=int(pre.get("context_slices", 5)),
            batch_cpu=int(d.get("batch_cpu", 8)),
            batch_cuda=int(d.get("batch_cuda", 64)),
            normalization=str(pre.get("normalization", "window")),
            onnx=OnnxExport.from_dict(d["onnx"]) if d.get("onnx") else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """The catalogue's stage entry (what :meth:`from_dict` reads)."""
        d = {"network": self.network.to_dict(), "weights": self.weights, "sha256": self.sha256,
             "classes": list(self.classes), "preprocessing": self.preprocessing_dict(),
             "batch_cpu": self.batch_cpu, "batch_cuda": self.batch_cuda}
        if self.onnx is not None:
            d["onnx"] = self.onnx.to_dict()
        return d

    def preprocessing_dict(self) -> dict[str, Any]:
        d = {"hu_window": list(self.hu_window), "spacing_xyz": list(self.spacing_xyz),
             "context_slices": self.context_slices}
        if self.normalization != "window":  # omitted when default: checkpoints written before the field still match
            d["normalization"] = self.normalization
        return d

    @property
    def has_lesion(self) -> bool:
        return 2 in self.classes


@dataclass(frozen=True)
class CascadeConfig:
    """How the coarse liver defines the box the fine stage works in, and the post-processing.

    Args:
        margin_mm: margin added around the coarse liver's bounding box, per axis ``(x, y, z)`` in mm.
        min_liver_ml: a coarse liver smaller than this is not trusted: the fine stage runs on the whole volume.
        fallback_on_inplane_edge: ``True`` restores the old rule that a coarse liver touching the in-plane
            field-of-view edge is not trusted (whole-volume fine stage). Off by default and in the shipped
            catalogue: on 512 x 512 contrast CT the liver often touches the lateral/anterior edge legitimately, and
            the whole-volume run then costs minutes and paints lesions across the body. Such a liver (or one cut by
            the first/last slice) only clips the box to the volume.
        coarse_threshold: probability above which a coarse voxel is liver.
        lesion_threshold: a lesion component whose maximum lesion probability is below this is removed
            (Han 2017, section 4: 0.80).
        quick_spacing_xyz: grid of both stages in quick mode (``--quick``), for slow CPUs.
        plausible_liver_l: ``(low, high)`` liver volume in litres (liver + lesions of the final labelmap); outside
            it the result gets a warning (adult livers are about 1-2.5 L; less is normal when the field of view
            cuts the liver). Only a warning: the segmentation is kept.
        max_lesion_burden_percent: lesion volume as a percentage of liver + lesion volume above which the result
            gets a warning.
        coarse_gate_mm: when set, the fine stage's liver and lesions are kept only within this distance (mm) of the
            coarse liver (its largest component, holes filled). The coarse stage sees whole slices at 2 mm and
            tells the liver from the spleen, heart or stomach by their place; the fine stage sees the liver box at
            native resolution and draws the boundary. ``None`` (default): Han's cascade as published, the fine
            stage alone decides inside the box.
        fine_inplane_floor_mm: the fine stage runs at native resolution, except that its in-plane (x, y) spacing is
            never finer than this (mm): a 0.57 mm scan is resampled to this floor inside the liver box and the
            probabilities are sampled back to the native voxels, so the fine stage's cost follows the liver rather
            than the scanner's pixel size. ``None`` (default): always native, as Han.
        fine_inplane_mm: when set, the fine stage runs on this in-plane (x, y) spacing (mm) for every scan, inside the
            liver box: finer scans are coarsened to it and coarser ones refined, and the probabilities are sampled
            back to the native voxels (z stays native). A 2.5D network's receptive field then covers the same
            anatomy whatever the scanner's pixel size. Replaces ``fine_inplane_floor_mm`` (set one, not both); for
            stages whose own ``spacing_xyz`` is native.
        coarse_liver_weight: ``w`` in the liver probability ``(1 - w) * fine + w * coarse`` inside the box (the
            coarse probability sampled to the native voxels); the lesion probability stays the fine stage's.
            ``0`` (default): Han's cascade, the fine stage alone. The two stages see the liver at different scales
            and err in different places: on han-liver's leave-one-out folds their mean (0.5) beat the fine stage
            alone on every case and the coarse stage alone on three of four (its model card).
        coarse_neck_mm: when set, the coarse liver (largest component) is eroded by a ball of this radius (mm); if
            that splits it, every part whose eroded core holds at least ``coarse_neck_min_ml`` and is not the
            largest core is cut off (each coarse-liver voxel goes with its nearest core). So a structure joined to
            the liver only through a neck thinner than about twice the radius leaves the box and the gate. The
            usual one is the heart: it rests on the diaphragm over the liver dome with the same grey in late
            phases, and a 2.5D coarse stage at 2 mm joins the two through the thin diaphragm. ``None`` (default):
            the largest component is kept whole, as Han.
        coarse_neck_min_ml: see ``coarse_neck_mm``; smaller cores (a thin lobe tip, a notch) stay with the liver.
        coarse_member_union: for a coarse stage that is an ensemble of several networks (``MeanEnsemble``): the
            members' mean probability is kept only inside the union of the members' own coarse livers (each member's
            largest component, cut at necks as above). Each member then decides alone what is joined to the liver,
            and the mean only refines the outline: two members that each keep the heart off the liver, one as a
            separate component and one behind a neck, otherwise average into a heart joined to the liver over a
            broad contact, which no neck cut separates. ``True`` (default); ignored for a single network.
    """

    margin_mm: tuple[float, float, float] = (10.0, 10.0, 10.0)
    min_liver_ml: float = 30.0
    fallback_on_inplane_edge: bool = False
    coarse_threshold: float = 0.5
    lesion_threshold: float = 0.8
    quick_spacing_xyz: tuple[float, float, float] = (3.0, 3.0, 3.0)
    plausible_liver_l: tuple[float, float] = (0.5, 4.5)
    max_lesion_burden_percent: float = 50.0
    coarse_gate_mm: float | None = None
    fine_inplane_floor_mm: float | None = None
    coarse_liver_weight: float = 0.0
    fine_inplane_mm: float | None = None
    coarse_neck_mm: float | None = None
    coarse_neck_min_ml: float = 10.0
    coarse_member_union: bool = True

    def __post_init__(self) -> None:
        if self.coarse_neck_mm is not None and not self.coarse_neck_mm > 0.0:
            raise ModelError(f"coarse_neck_mm must be > 0 mm or null, got {self.coarse_neck_mm}")
        if not self.coarse_neck_min_ml >= 0.0:
            raise ModelError(f"coarse_neck_min_ml must be >= 0 mL, got {self.coarse_neck_min_ml}")
        if self.fine_inplane_mm is not None and not self.fine_inplane_mm > 0.0:
            raise ModelError(f"fine_inplane_mm must be > 0 mm or null, got {self.fine_inplane_mm}")
        if self.fine_inplane_mm is not None and self.fine_inplane_floor_mm is not None:
            raise ModelError("set fine_inplane_mm or fine_inplane_floor_mm, not both")
        if not 0.0 <= self.coarse_liver_weight <= 1.0:
            raise ModelError(f"coarse_liver_weight must lie in [0, 1], got {self.coarse_liver_weight}")
        if self.fine_inplane_floor_mm is not None and not self.fine_inplane_floor_mm > 0.0:
            raise ModelError(f"fine_inplane_floor_mm must be > 0 mm or null, got {self.fine_inplane_floor_mm}")
        if self.coarse_gate_mm is not None and not self.coarse_gate_mm >= 0.0:
            raise ModelError(f"coarse_gate_mm must be >= 0 mm or null, got {self.coarse_gate_mm}")
        bounds = list(self.plausible_liver_l)
        if len(bounds) != 2 or not 0.0 <= bounds[0] < bounds[1]:
            raise ModelError(f"plausible_liver_l must be [low, high] litres with 0 <= low < high, got {bounds}")
        if not 0.0 <= self.max_lesion_burden_percent <= 100.0:
            raise ModelError(f"max_lesion_burden_percent must lie in [0, 100], got {self.max_lesion_burden_percent}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CascadeConfig:
        return cls(
            margin_mm=tuple(float(m) for m in d.get("margin_mm", (10.0, 10.0, 10.0))),
            min_liver_ml=float(d.get("min_liver_ml", 30.0)),
            fallback_on_inplane_edge=bool(d.get("fallback_on_inplane_edge", False)),
            coarse_threshold=float(d.get("coarse_threshold", 0.5)),
            lesion_threshold=float(d.get("lesion_threshold", 0.8)),
            quick_spacing_xyz=tuple(float(v) for v in d.get("quick_spacing_xyz", (3.0, 3.0, 3.0))),
            plausible_liver_l=tuple(float(v) for v in d.get("plausible_liver_l", (0.5, 4.5))),
            max_lesion_burden_percent=float(d.get("max_lesion_burden_percent", 50.0)),
            coarse_gate_mm=None if d.get("coarse_gate_mm") is None else float(d["coarse_gate_mm"]),
            fine_inplane_floor_mm=(None if d.get("fine_inplane_floor_mm") is None
                                   else float(d["fine_inplane_floor_mm"])),
            coarse_liver_weight=float(d.get("coarse_liver_weight", 0.0)),
            fine_inplane_mm=None if d.get("fine_inplane_mm") is None else float(d["fine_inplane_mm"]),
            coarse_neck_mm=None if d.get("coarse_neck_mm") is None else float(d["coarse_neck_mm"]),
            coarse_neck_min_ml=float(d.get("coarse_neck_min_ml", 10.0)),
            coarse_member_union=bool(d.get("coarse_member_union", True)),
        )

    def to_dict(self) -> dict[str, Any]:
        """The catalogue's ``cascade`` entry (what :meth:`from_dict` reads)."""
        return {"margin_mm": list(self.margin_mm), "min_liver_ml": self.min_liver_ml,
                "fallback_on_inplane_edge": self.fallback_on_inplane_edge, "coarse_threshold": self.coarse_threshold,
                "lesion_threshold": self.lesion_threshold, "quick_spacing_xyz": list(self.quick_spacing_xyz),
                "plausible_liver_l": list(self.plausible_liver_l),
                "max_lesion_burden_percent": self.max_lesion_burden_percent, "coarse_gate_mm": self.coarse_gate_mm,
                **({"fine_inplane_floor_mm": self.fine_inplane_floor_mm} if self.fine_inplane_floor_mm else {}),
                **({"fine_inplane_mm": self.fine_inplane_mm} if self.fine_inplane_mm else {}),
                **({"coarse_liver_weight": self.coarse_liver_weight} if self.coarse_liver_weight else {}),
                **({"coarse_neck_mm": self.coarse_neck_mm, "coarse_neck_min_ml": self.coarse_neck_min_ml}
                   if self.coarse_neck_mm else {}),
                **({} if self.coarse_member_union else {"coarse_member_union": False})}


@dataclass(frozen=True)
class ModelConfig:
    """A complete model: identity, labels, the coarse stage, the optional fine stage and the cascade."""

    id: str
    version: str
    title: str
    coarse: StageConfig
    fine: StageConfig | None
    cascade: CascadeConfig = field(default_factory=CascadeConfig)
    labels: tuple[LabelInfo, ...] = field(default_factory=lambda: tuple(default_labels()))
    description: str = ""
    licence: str = ""
    license: str = ""  # SPDX identifier of the weights' terms (e.g. CC-BY-NC-SA-4.0: non-commercial use only)
    training_data: str = ""
    accuracy: dict[str, Any] = field(default_factory=dict)
    model_card: str = ""
    runtimes: dict[str, Any] = field(default_factory=dict)
    weights_dir: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any], weights_dir: str | None = None) -> ModelConfig:
        labels = tuple(LabelInfo.from_dict(lb) for lb in d.get("labels", [])) or tuple(default_labels())
        stages = d["stages"]
        return cls(
            id=d["id"],
            version=d["version"],
            title=d.get("title", d["id"]),
            coarse=StageConfig.from_dict(stages["coarse"]),
            fine=StageConfig.from_dict(stages["fine"]) if stages.get("fine") else None,
            cascade=CascadeConfig.from_dict(d.get("cascade", {})),
            labels=labels,
            description=d.get("description", ""),
            licence=d.get("licence", ""),
            license=d.get("license", ""),
            training_data=d.get("training_data", ""),
            accuracy=dict(d.get("accuracy", {})),
            model_card=d.get("model_card", ""),
            runtimes=dict(d.get("runtimes", {})),
            weights_dir=weights_dir,
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``models.json`` entry of this model (what :meth:`from_dict` reads; ``weights_dir`` is where the
        catalogue lives, not part of the entry). Optional texts and tables are left out when empty."""
        d: dict[str, Any] = {"id": self.id, "version": self.version, "title": self.title,
                             "description": self.description, "licence": self.licence}
        for key in ("license", "training_data", "model_card"):
            if getattr(self, key):
                d[key] = getattr(self, key)
        d["labels"] = [lb.to_dict() for lb in self.labels]
        d["stages"] = {"coarse": self.coarse.to_dict(), **({"fine": self.fine.to_dict()} if self.fine else {})}
        d["cascade"] = self.cascade.to_dict()
        d["accuracy"] = dict(self.accuracy)
        if self.runtimes:
            d["runtimes"] = dict(self.runtimes)
        return d

    def weight_path(self, weights: str) -> Path:
        """Absolute path of a weight file named in this model's config (relative names: its ``weights_dir``)."""
        p = Path(weights)
        if p.is_absolute():
            return p
        return Path(self.weights_dir or resources_dir() / "weights") / p

    def label_values(self) -> set[int]:
        classes = set(self.coarse.classes) | (set(self.fine.classes) if self.fine else set())
        return classes - {0}
