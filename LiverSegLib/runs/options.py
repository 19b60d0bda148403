"""What a segmentation run is asked to do, in one frozen value shared by every front end.

The CLI builds it from its arguments, Slicer's logic and batch from their keyword arguments, and the subprocess
runner turns it back into CLI arguments for its child (:meth:`SegmentOptions.cli_args`): one place holds each
default, and ``lesion_threshold=None`` means "the model's own value" everywhere.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from LiverSegLib.config import DEVICES, PRECISIONS, RUNTIMES, SURFACE_FORMATS
from LiverSegLib.errors import InputError

__all__ = ["SegmentOptions"]


@dataclass(frozen=True)
class SegmentOptions:
    """Options of one segmentation run (validated on creation; invalid values raise :class:`InputError`).

    Args:
        model: catalogue model id (``None``: the catalogue's default model).
        model_file: a LiverSeg checkpoint file used instead of the catalogue (exclusive with ``model``).
        device: one of :data:`DEVICES`.
        runtime: what executes the networks, one of :data:`RUNTIMES` (``"auto"``: OpenVINO on the CPU where the
            model has an ONNX export and OpenVINO is installed, torch otherwise).
        precision: the ONNX engines' arithmetic, one of :data:`PRECISIONS` (``"auto"``: bfloat16 where the CPU has
            it natively).
        lesion_threshold: drop a lesion whose maximum probability is below this; ``None``: the model's
            ``cascade.lesion_threshold`` from ``models.json``.
        quick: run both stages on the model's 3 mm grid (faster on a slow CPU, coarser boundaries, and lesion
            results may change).
        surfaces: also write closed liver/lesion surfaces, ``"stl"`` or ``"obj"`` (file outputs only).
        overwrite: replace an output folder that holds earlier LiverSeg results (never one with other files).
        overview: render ``overview.png`` (needs matplotlib; Slicer's runner asks for none: Slicer shows the
            result itself and does not ship matplotlib).
        dicom_seg: write ``segmentation.dcm`` (DICOM SEG) and ``measurements.dcm`` (TID 1500 SR): ``None`` for DICOM
            inputs only (skipped with a warning when the series cannot be referenced), ``True`` always (an input
            that is not DICOM is written as a DICOM series too), ``False`` never.
        series: the Series Instance UID to read from a DICOM folder holding several series.
    """

    model: str | None = None
    model_file: str | None = None
    device: str = "auto"
    runtime: str = "auto"
    precision: str = "auto"
    lesion_threshold: float | None = None
    quick: bool = False
    surfaces: str | None = None
    overwrite: bool = False
    overview: bool = True
    dicom_seg: bool | None = None
    series: str | None = None

    def __post_init__(self) -> None:
        if self.model and self.model_file:
            raise InputError("give a model id or a model file, not both")
        if self.device not in DEVICES:
            raise InputError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.runtime not in RUNTIMES:
            raise InputError(f"runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.lesion_threshold is not None:
            try:
                value = float(self.lesion_threshold)
            except (TypeError, ValueError):
                value = float("nan")
            if not 0.0 <= value <= 1.0:
                raise InputError(f"--lesion-threshold must be between 0 and 1, got {self.lesion_threshold}")
            object.__setattr__(self, "lesion_threshold", value)
        if self.surfaces is not None:
            if str(self.surfaces).lower() not in SURFACE_FORMATS:
                raise InputError(f"unsupported surface format: {self.surfaces!r} (use one of "
                                 f"{', '.join(SURFACE_FORMATS)})")
            object.__setattr__(self, "surfaces", str(self.surfaces).lower())

    def cli_args(self) -> list[str]:
        """These options as ``liverseg segment`` arguments (defaults left out, so the model's values hold)."""
        args = ["--device", self.device]
        if self.runtime != "auto":
            args += ["--runtime", self.runtime]
        if self.precision != "auto":
            args += ["--precision", self.precision]
        if self.model_file:
            args += ["--model-file", str(self.model_file)]
        elif self.model:
            args += ["--model", self.model]
        if self.lesion_threshold is not None:
            args += ["--lesion-threshold", repr(float(self.lesion_threshold))]
        if self.quick:
            args.append("--quick")
        if self.surfaces:
            args += ["--surfaces", self.surfaces]
        if self.overwrite:
            args.append("--overwrite")
        if not self.overview:
            args.append("--no-overview")
        if self.dicom_seg is not None:
            args.append("--dicom-seg" if self.dicom_seg else "--no-dicom-seg")
        if self.series:
            args += ["--series", self.series]
        return args

    @classmethod
    def from_cli(cls, args: argparse.Namespace) -> SegmentOptions:
        """The options of parsed ``liverseg segment`` arguments (missing attributes take the defaults)."""
        return cls(model=getattr(args, "model", None), model_file=getattr(args, "model_file", None),
                   device=getattr(args, "device", "auto"), runtime=getattr(args, "runtime", "auto"),
                   precision=getattr(args, "precision", "auto"),
                   lesion_threshold=getattr(args, "lesion_threshold", None),
                   quick=bool(getattr(args, "quick", False)), surfaces=getattr(args, "surfaces", None),
                   overwrite=bool(getattr(args, "overwrite", False)),
                   overview=not getattr(args, "no_overview", False), dicom_seg=getattr(args, "dicom_seg", None),
                   series=getattr(args, "series", None))
