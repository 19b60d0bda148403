"""The inference pipeline: orientation, resampling, stages, the liver box and the cascade predictor."""

from LiverSegLib.pipeline.predictor import Predictor, resolve_device

__all__ = ["Predictor", "resolve_device"]
