"""One network of the cascade, loaded once and applied slice by slice (2.5D) to a volume on its grid."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - torch convention

from LiverSegLib.config import StageConfig
from LiverSegLib.errors import ModelError
from LiverSegLib.networks import build_network
from LiverSegLib.weights import load_checkpoint

__all__ = ["StageModel", "StageOutput", "normalize_hu", "stage_config_dict"]


def normalize_hu(array: np.ndarray | torch.Tensor, hu_window: tuple[float, float]):
    """Clip to the HU window and scale linearly to [-1, 1] (in place for float arrays/tensors)."""
    lo, hi = hu_window
    if isinstance(array, torch.Tensor):
        return array.clamp_(lo, hi).sub_((lo + hi) / 2).mul_(2.0 / (hi - lo))
    np.clip(array, lo, hi, out=array)
    array -= (lo + hi) / 2
    array *= 2.0 / (hi - lo)
    return array


def stage_config_dict(stage: StageConfig) -> dict:
    """The part of a stage config a checkpoint carries to describe itself."""
    return {"network": stage.network.to_dict(), "classes": list(stage.classes),
            "preprocessing": stage.preprocessing_dict()}


def _as_json(value):
    """Normalise tuples to lists (as JSON would) so configs from code, JSON and checkpoints compare equal."""
    return json.loads(json.dumps(value))


@dataclass
class StageOutput:
    """Probabilities of one stage on its grid, as float16.

    ``foreground`` = 1 - p(background) (liver and lesion merged); ``lesion`` = p(lesion) or ``None`` for a
    liver-only stage.
    """

    foreground: np.ndarray
    lesion: np.ndarray | None


class StageModel:
    """A stage network with its weights, ready for inference.

    Args:
        stage: the stage's configuration.
        weights_path: its checkpoint; the sha256 in ``stage`` is checked before loading.
        device: torch device to run on.
        verify: check the sha256 (``False`` only for a checkpoint the user named directly, whose hash is the
            one just computed).
    """

    def __init__(self, stage: StageConfig, weights_path: Path, device: torch.device, verify: bool = True) -> None:
        self.stage = stage
        self.device = device
        ckpt = load_checkpoint(weights_path, stage.sha256 if verify else None)
        described = _as_json(ckpt["config"])
        expected = _as_json(stage_config_dict(stage))
        for key in ("network", "classes", "preprocessing"):
            if described.get(key) != expected[key]:
                raise ModelError(
                    f"checkpoint {Path(weights_path).name} was made for {key} {described.get(key)}, but the model "
                    f"config gives {expected[key]}; fix the catalogue entry or use the matching checkpoint"
                )
        net = build_network(stage.network.name, stage.network.kwargs)
        try:
            net.load_state_dict(ckpt["state_dict"], strict=True)
        except RuntimeError as exc:
            detail = " ".join(" ".join(str(exc).split()).split(":")[1:])[:300]
            raise ModelError(f"checkpoint {Path(weights_path).name} does not fit its network: {detail}") from None
        if getattr(net, "in_channels", stage.context_slices) != stage.context_slices:
            raise ModelError(f"network takes {net.in_channels} slices but the config gives {stage.context_slices}")
        self.net = net.to(device).eval()
        if device.type == "cuda":
            self.net = self.net.to(memory_format=torch.channels_last)
        self.size_multiple = int(getattr(net, "size_multiple", 1))
        self.lesion_channel = stage.classes.index(2) if 2 in stage.classes else None

    @property
    def batch_size(self) -> int:
        return self.stage.batch_cuda if self.device.type == "cuda" else self.stage.batch_cpu

    @torch.inference_mode()
    def predict(self, normalized_zyx: np.ndarray, z_indices: np.ndarray,
                progress: Callable[[float], None] | None = None) -> StageOutput:
        """Run the network on the axial slices ``z_indices`` of a normalised volume on this stage's grid.

        Neighbouring slices outside the volume repeat the edge slice. Returns probabilities for the chosen
        slices only, shape ``(len(z_indices), Y, X)``.
        """
        nz, ny, nx = normalized_zyx.shape
        m = self.size_multiple
        pad_y, pad_x = (-ny) % m, (-nx) % m
        volume = torch.from_numpy(np.ascontiguousarray(normalized_zyx, dtype=np.float32))
        half = self.stage.context_slices // 2
        offsets = np.arange(-half, half + 1)
        fg = np.empty((len(z_indices), ny, nx), np.float16)
        lesion = np.empty_like(fg) if self.lesion_channel is not None else None
        autocast = (torch.autocast("cuda", dtype=torch.float16) if self.device.type == "cuda" else nullcontext())
        bs = max(1, self.batch_size)
        for start in range(0, len(z_indices), bs):
            centres = np.asarray(z_indices[start:start + bs])
            idx = np.clip(centres[:, None] + offsets[None, :], 0, nz - 1)
            batch = volume[torch.from_numpy(idx)]  # (B, C, Y, X)
            if pad_y or pad_x:  # pad with the window's minimum (air) so padding looks like outside the body
                batch = F.pad(batch, (0, pad_x, 0, pad_y), value=-1.0)
            batch = batch.to(self.device, non_blocking=True)
            if self.device.type == "cuda":
                batch = batch.contiguous(memory_format=torch.channels_last)
            with autocast:
                logits = self.net(batch)
            probs = torch.softmax(logits.float(), dim=1)[:, :, :ny, :nx]
            fg[start:start + len(centres)] = (1.0 - probs[:, 0]).half().cpu().numpy()
            if lesion is not None:
                lesion[start:start + len(centres)] = probs[:, self.lesion_channel].half().cpu().numpy()
            if progress is not None:
                progress(min(1.0, (start + len(centres)) / len(z_indices)))
        return StageOutput(fg, lesion)
