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
from torch import nn

from LiverSegLib.config import StageConfig
from LiverSegLib.errors import LiverSegError, ModelError
from LiverSegLib.weights import load_checkpoint

__all__ = ["SliceStage", "StageModel", "StageOutput", "normalize_hu", "histogram_equalize", "normalize_input",
           "stage_grid", "stage_config_dict"]

# Grey levels of the histogram equalisation (the Mixed U-Net's S; 8-bit images in the paper).
HISTEQ_LEVELS = 256


def normalize_hu(array: np.ndarray | torch.Tensor, hu_window: tuple[float, float]):
    """Clip to the HU window and scale linearly to [-1, 1] (in place for float arrays/tensors)."""
    lo, hi = hu_window
    if isinstance(array, torch.Tensor):
        return array.clamp_(lo, hi).sub_((lo + hi) / 2).mul_(2.0 / (hi - lo))
    np.clip(array, lo, hi, out=array)
    array -= (lo + hi) / 2
    array *= 2.0 / (hi - lo)
    return array


def histogram_equalize(normalized_zyx: np.ndarray, levels: int = HISTEQ_LEVELS) -> np.ndarray:
    """Histogram-equalise each axial slice of a [-1, 1] windowed volume, in place, back to [-1, 1].

    The Mixed U-Net's formula ``h(x) = round((cdf(x) - cdf_min) / (N - cdf_min) * (S - 1))`` per slice, with ``N``
    the pixels of the slice and ``S`` grey levels, scaled to [-1, 1]. Per slice, as the paper equalises 2D images;
    the pipeline equalises whole slices before cropping the liver box so training and inference see the same
    mapping. A constant slice maps to -1.
    """
    edges = np.linspace(-1.0, 1.0, levels + 1, dtype=np.float32)[1:-1]
    for z in range(normalized_zyx.shape[0]):
        plane = normalized_zyx[z]
        bins = np.searchsorted(edges, plane, side="right")
        cdf = np.cumsum(np.bincount(bins.ravel(), minlength=levels)).astype(np.float64)
        cdf_min = cdf[cdf > 0][0] if cdf[-1] else 0.0
        denom = cdf[-1] - cdf_min
        if denom <= 0:
            plane[...] = -1.0
            continue
        lut = np.round((cdf - cdf_min) / denom * (levels - 1)).clip(0, levels - 1) / (levels - 1) * 2.0 - 1.0
        plane[...] = lut.astype(np.float32)[bins]
    return normalized_zyx


def normalize_input(array: np.ndarray, stage: StageConfig) -> np.ndarray:
    """A stage's input normalisation in place on a float32 HU array: the HU window, then optional equalisation."""
    normalize_hu(array, stage.hu_window)
    if stage.normalization == "histeq":
        histogram_equalize(array)
    return array


def _is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA out-of-memory error, or the CPU allocator failing (torch raises a RuntimeError for that)."""
    return isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in str(exc) or \
        "out of memory" in str(exc).lower()


def stage_grid(array_zyx: np.ndarray, spacing_xyz: tuple[float, float, float], stage: StageConfig,
               target_xyz: tuple[float | None, float | None, float | None] | None = None,
               normalize: bool = True) -> np.ndarray:
    """A (canonical) HU volume brought to a stage's grid and normalised: what the network sees.

    The volume is clipped to the HU window and resampled a few slices at a time, then scaled to [-1, 1] and, with
    the ``histeq`` normalisation, equalised slice by slice on the stage grid. Training and inference both call
    this, so they cannot drift apart.

    Args:
        array_zyx: HU values, any dtype (never modified).
        spacing_xyz: its spacing.
        stage: the stage whose preprocessing applies.
        target_xyz: the grid's spacing (default: the stage's ``spacing_xyz``; ``None`` per axis = native).
        normalize: ``False`` returns the clipped HU values on the grid (training keeps HU to insert synthetic
            lesions, then calls :func:`normalize_input` on each sample).
    """
    from LiverSegLib.pipeline.grids import resample_to_shape, stage_shape

    target = stage.spacing_xyz if target_xyz is None else target_xyz
    grid = resample_to_shape(array_zyx, stage_shape(array_zyx.shape, spacing_xyz, target), hu_window=stage.hu_window)
    return normalize_input(grid, stage) if normalize else grid


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
    liver-only stage. For an ensemble stage both are the members' mean, and ``members`` holds each member's
    foreground, shape ``(count, *foreground.shape)``, when the caller asked for it (``None`` otherwise).
    """

    foreground: np.ndarray
    lesion: np.ndarray | None
    members: np.ndarray | None = None


def fold_members(probs, count: int):
    """``(mean, member_foregrounds)`` of an ensemble's softmax output.

    ``probs`` is the softmax over the channel axis (axis 1) of :class:`~LiverSegLib.networks.ensemble.MeanEnsemble`'s
    output, shape ``(B, count * C, ...)``: each member's probabilities divided by ``count``. Each member's group is
    normalised again (exact for a 2D/2.5D stage already; for a 3D stage, whose sliding windows blend the logits, it
    is each member's softmax of its blended logits). Returns the members' mean probabilities ``(B, C, ...)`` and
    each member's foreground ``1 - p(background)``, ``(B, count, ...)``. Works on numpy arrays and torch tensors
    alike; ``count == 1`` returns ``(probs, None)``.
    """
    if count == 1:
        return probs, None
    shape = tuple(probs.shape)
    per_member = probs.reshape(shape[0], count, shape[1] // count, *shape[2:])
    if isinstance(probs, torch.Tensor):
        per_member = per_member / per_member.sum(2, keepdim=True)
        return per_member.mean(1), 1.0 - per_member[:, :, 0]
    per_member = per_member / per_member.sum(axis=2, keepdims=True)
    return per_member.mean(axis=1), 1.0 - per_member[:, :, 0]


class SliceStage:
    """What every runtime of a 2D/2.5D stage shares: slice stacks in, per-slice probabilities out.

    A subclass sets ``stage``, ``lesion_channel``, ``warnings`` and implements :meth:`_probabilities` (softmax over
    a batch of stacks) and :meth:`_shrink_after_out_of_memory`, and may override :attr:`batch_size`.
    """

    stage: StageConfig
    lesion_channel: int | None
    warnings: list[str]

    @property
    def batch_size(self) -> int:
        return max(1, self.stage.batch_cpu)

    def _probabilities(self, batch: np.ndarray) -> np.ndarray | torch.Tensor:
        """Softmax (B, C, Y, X) of the network over a float32 batch of slice stacks (B, context, Y, X)."""
        raise NotImplementedError

    def _shrink_after_out_of_memory(self) -> None:
        raise NotImplementedError

    def _is_out_of_memory(self, exc: BaseException) -> bool:
        return _is_out_of_memory(exc)

    def _predict_slices(self, normalized_zyx: np.ndarray, z_indices: np.ndarray,
                        progress: Callable[[float], None] | None, keep_members: bool = False) -> StageOutput:
        """Each chosen slice with its neighbours as channels (slices outside the volume repeat the edge slice)."""
        nz, ny, nx = normalized_zyx.shape
        volume = np.ascontiguousarray(normalized_zyx, dtype=np.float32)
        half = self.stage.context_slices // 2
        offsets = np.arange(-half, half + 1)
        count = self.stage.members
        fg = np.empty((len(z_indices), ny, nx), np.float16)
        lesion = np.empty_like(fg) if self.lesion_channel is not None else None
        members = np.empty((count, *fg.shape), np.float16) if keep_members and count > 1 else None
        start = 0
        while start < len(z_indices):
            centres = np.asarray(z_indices[start:start + self.batch_size])
            idx = np.clip(centres[:, None] + offsets[None, :], 0, nz - 1)
            try:
                probs = self._probabilities(volume[idx])  # (B, C, Y, X); (B, count * C, Y, X) for an ensemble
            except Exception as exc:  # noqa: BLE001 - each runtime raises its own error type for memory
                if not self._is_out_of_memory(exc):
                    raise
                self._shrink_after_out_of_memory()
                continue  # the same slices again, with a smaller batch (or on the CPU)
            probs, member_fg = fold_members(probs, count)
            rows = slice(start, start + len(centres))
            if isinstance(probs, torch.Tensor):  # halved on the device: a quarter of the bytes cross to the host
                fg[rows] = (1.0 - probs[:, 0]).half().cpu().numpy()
                if lesion is not None:
                    lesion[rows] = probs[:, self.lesion_channel].half().cpu().numpy()
                if members is not None:
                    members[:, rows] = member_fg.transpose(0, 1).half().cpu().numpy()
            else:
                fg[rows] = 1.0 - probs[:, 0]
                if lesion is not None:
                    lesion[rows] = probs[:, self.lesion_channel]
                if members is not None:
                    members[:, rows] = member_fg.swapaxes(0, 1)
            start += len(centres)
            if progress is not None:
                progress(min(1.0, start / len(z_indices)))
        return StageOutput(fg, lesion, members)


class StageModel(SliceStage):
    """A stage network with its weights, ready for inference.

    Args:
        stage: the stage's configuration.
        weights_path: its checkpoint; the sha256 in ``stage`` is checked before loading.
        device: torch device to run on.
        verify: check the sha256 (``False`` only for a checkpoint the user named directly, whose hash is the
            one just computed).
    """

    def __init__(self, stage: StageConfig, weights_path: Path, device: torch.device, verify: bool = True) -> None:
        ckpt = load_checkpoint(weights_path, stage.sha256 if verify else None)
        described = _as_json(ckpt["config"])
        expected = _as_json(stage_config_dict(stage))
        for key in ("network", "classes", "preprocessing"):
            if described.get(key) != expected[key]:
                raise ModelError(
                    f"checkpoint {Path(weights_path).name} was made for {key} {described.get(key)}, but the model "
                    f"config gives {expected[key]}; fix the catalogue entry or use the matching checkpoint"
                )
        from LiverSegLib.networks import build_network  # MONAI's blocks: imported only when torch runs the stage

        try:
            net = build_network(stage.network.name, stage.network.kwargs)
        except ModelError as exc:
            raise ModelError(f"checkpoint {Path(weights_path).name}: {exc}") from None
        try:
            net.load_state_dict(ckpt["state_dict"], strict=True)
        except RuntimeError as exc:
            detail = " ".join(" ".join(str(exc).split()).split(":")[1:])[:300]
            raise ModelError(f"checkpoint {Path(weights_path).name} does not fit its network: {detail}") from None
        self._setup(stage, net, device)

    @classmethod
    def from_network(cls, stage: StageConfig, net: nn.Module, device: torch.device) -> StageModel:
        """Wrap a network already in memory (e.g. during training, for validation) without a checkpoint."""
        model = cls.__new__(cls)
        model._setup(stage, net, device)
        return model

    def _setup(self, stage: StageConfig, net: nn.Module, device: torch.device) -> None:
        self.stage = stage
        self.device = device
        self.spatial_dims = int(getattr(net, "spatial_dims", 2))
        if self.spatial_dims == 2 and getattr(net, "in_channels", stage.context_slices) != stage.context_slices:
            raise ModelError(f"network takes {net.in_channels} slices but the config gives {stage.context_slices}")
        self.net = net.to(device).eval()
        if device.type == "cuda" and self.spatial_dims == 2:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.size_multiple = int(getattr(net, "size_multiple", 1))
        self.lesion_channel = stage.classes.index(2) if 2 in stage.classes else None
        self._batch_override: int | None = None
        self.warnings: list[str] = []  # what this stage had to change to finish (out-of-memory fallbacks)

    @property
    def batch_size(self) -> int:
        """Slices per forward pass: the config's for the device, or less after an out-of-memory error."""
        if self._batch_override is not None:
            return self._batch_override
        return max(1, self.stage.batch_cuda if self.device.type == "cuda" else self.stage.batch_cpu)

    @torch.inference_mode()
    def predict(self, normalized_zyx: np.ndarray, z_indices: np.ndarray,
                progress: Callable[[float], None] | None = None, keep_members: bool = False) -> StageOutput:
        """Run the network on the axial slices ``z_indices`` of a normalised volume on this stage's grid.

        A 2D/2.5D network sees each slice with its neighbours (slices outside the volume repeat the edge slice); a
        3D network sees the whole grid (sliding windows when it is large). Returns probabilities for the chosen
        slices only, shape ``(len(z_indices), Y, X)``; with ``keep_members``, an ensemble stage also returns each
        member's foreground (:class:`StageOutput`).
        """
        if self.spatial_dims == 3:
            return self._predict_3d(normalized_zyx, np.asarray(z_indices), progress, keep_members)
        return self._predict_slices(normalized_zyx, z_indices, progress, keep_members)

    def _probabilities(self, batch: np.ndarray) -> torch.Tensor:
        """Softmax of the network over a CPU batch of slice stacks, cropped back from the size-multiple padding."""
        batch = torch.from_numpy(batch)
        ny, nx = batch.shape[-2:]
        m = self.size_multiple
        pad_y, pad_x = (-ny) % m, (-nx) % m
        if pad_y or pad_x:  # pad with the window's minimum (air) so padding looks like outside the body
            batch = F.pad(batch, (0, pad_x, 0, pad_y), value=-1.0)
        batch = batch.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.device.type == "cuda" else nullcontext()
        with autocast:
            logits = self.net(batch)
        return torch.softmax(logits.float(), dim=1)[:, :, :ny, :nx]

    def _shrink_after_out_of_memory(self) -> None:
        """Out of memory: halve the slice batch; at one slice, move this stage from the GPU to the CPU.

        A run never ends for want of GPU memory while the CPU can do the work; what happened is reported in
        :attr:`warnings` (and so in the result).
        """
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if self.batch_size > 1:
            self._batch_override = max(1, self.batch_size // 2)
            note = f"out of memory on {self.device}: {self.stage.network.name} batch reduced to {self._batch_override}"
        elif self.device.type != "cpu":
            self.net = self.net.to(torch.device("cpu"), memory_format=torch.contiguous_format)
            self.device = torch.device("cpu")
            self._batch_override = None
            note = f"GPU out of memory even one slice at a time: the {self.stage.network.name} stage ran on the CPU"
        else:
            raise LiverSegError("not enough memory to run the network even one slice at a time; close other "
                                "programs or use --quick") from None
        # one line per stage and kind: the latest batch size replaces the earlier ones
        self.warnings = [w for w in self.warnings if "batch reduced" not in w or "batch reduced" not in note]
        self.warnings.append(note)

    def _predict_3d(self, normalized_zyx: np.ndarray, z_indices: np.ndarray,
                    progress: Callable[[float], None] | None, keep_members: bool = False) -> StageOutput:
        """Whole-volume inference of a 3D network (DI2IN) with MONAI's sliding-window inferer.

        Windows of ``roi`` voxels (240 x 480 x 480 mm at 3 mm: a whole abdomen in one window for most scans), padded
        with air (-1) to the network's size multiple; overlapping windows are blended with gaussian weights.
        """
        from monai.inferers import sliding_window_inference

        m = self.size_multiple
        roi = [max(m, -(-min(dim, cap) // m) * m) for dim, cap in zip(normalized_zyx.shape, (80, 160, 160),
                                                                        strict=True)]
        volume = torch.from_numpy(np.ascontiguousarray(normalized_zyx, dtype=np.float32))[None, None]
        while True:
            autocast = torch.autocast("cuda", dtype=torch.float16) if self.device.type == "cuda" else nullcontext()
            try:
                with autocast:
                    logits = sliding_window_inference(
                        volume, roi_size=roi, sw_batch_size=1, predictor=self.net, overlap=0.25, mode="gaussian",
                        padding_mode="constant", cval=-1.0, sw_device=self.device, device=torch.device("cpu"),
                        progress=False)
                break
            except (torch.OutOfMemoryError, RuntimeError) as exc:
                if not _is_out_of_memory(exc):
                    raise
                self._batch_override = 1  # one window at a time already: the next step is the CPU
                self._shrink_after_out_of_memory()
        probs, member_fg = fold_members(torch.softmax(logits.float(), dim=1), self.stage.members)
        z = torch.from_numpy(z_indices)
        probs = probs[0][:, z]
        fg = (1.0 - probs[0]).half().numpy()
        lesion = probs[self.lesion_channel].half().numpy() if self.lesion_channel is not None else None
        members = member_fg[0][:, z].half().numpy() if keep_members and member_fg is not None else None
        if progress is not None:
            progress(1.0)
        return StageOutput(fg, lesion, members)
