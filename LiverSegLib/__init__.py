"""LiverSegLib: liver and liver-lesion segmentation in CT (Han's 2.5D coarse-to-fine cascade).

The headless library behind the LiverSeg 3D Slicer extension and the ``liverseg`` command. It never imports
Slicer or Qt. Heavy modules (torch) load on first use, so ``import LiverSegLib`` is cheap.

Example::

    import LiverSegLib
    volume = LiverSegLib.read_volume("ct.nii.gz")
    result = LiverSegLib.segment(volume)            # default model, GPU when present
    print(result.liver_volume_ml, len(result.lesions))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from LiverSegLib.errors import CancelledError, InputError, LiverSegError, ModelError, OutputExistsError
from LiverSegLib.types import LabelInfo, LesionRecord, SegmentationResult, Volume

if TYPE_CHECKING:
    from LiverSegLib.config import ModelConfig
    from LiverSegLib.pipeline.predictor import Predictor, ProgressCallback

__version__ = "0.1.0"
__all__ = [
    "Volume", "SegmentationResult", "LesionRecord", "LabelInfo", "segment", "read_volume", "write_volume",
    "Predictor", "LiverSegError", "InputError", "ModelError", "OutputExistsError", "CancelledError",
]


def segment(volume: Volume, model: str | ModelConfig | None = None, device: str = "auto",
            progress: ProgressCallback | None = None, lesion_threshold: float | None = None,
            quick: bool = False) -> SegmentationResult:
    """Segment liver and liver lesions in a CT volume with Han's cascade.

    Args:
        volume: CT in Hounsfield units, any stored orientation.
        model: model id from the catalogue (``liverseg models list``), a ``ModelConfig``, or ``None`` (default).
        device: ``"auto"`` (GPU when present), ``"cpu"`` or ``"cuda"``.
        progress: ``progress(stage, fraction)`` callback; raise :class:`CancelledError` in it to cancel.
        lesion_threshold: minimum of a lesion's maximum probability to keep it (default from the model, 0.80).
        quick: run both stages on a 3 mm grid (faster on slow CPUs, coarser boundaries).

    For many volumes, build one :class:`Predictor` and call ``predict`` on each: the model loads once.
    """
    from LiverSegLib.pipeline.predictor import Predictor

    return Predictor(model, device=device).predict(volume, progress=progress, lesion_threshold=lesion_threshold,
                                                   quick=quick)


def __getattr__(name: str) -> Any:
    if name == "Predictor":
        from LiverSegLib.pipeline.predictor import Predictor

        return Predictor
    if name in ("read_volume", "write_volume"):
        from LiverSegLib import io

        return getattr(io, name)
    raise AttributeError(f"module 'LiverSegLib' has no attribute {name!r}")
