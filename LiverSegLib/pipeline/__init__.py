"""The inference pipeline: geometry (orientation, oblique resampling), stage grids, stages, the liver box,
post-processing and the cascade predictor."""

from LiverSegLib.pipeline.predictor import Predictor, resolve_device

__all__ = ["Predictor", "resolve_device"]
