"""Han's coarse-to-fine cascade as a reusable predictor (Han 2017, sections 3.1 and 4).

coarse model on every axial slice at the coarse spacing -> largest 3D component -> liver box + margin (whole
volume when untrusted) -> fine model at native resolution on the box's slices -> merge liver and lesion, largest
component = liver -> lesion voxels inside it -> 3D lesion components, drop those whose maximum lesion probability
is below the threshold -> uint8 labelmap on the input grid and a per-lesion table, with a warning when the liver
volume or lesion burden is implausible (``plausibility.py``).

Probabilities only ever exist on the coarse grid or inside the box, as float16.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from LiverSegLib.config import PRECISIONS, RUNTIMES, CascadeConfig, ModelConfig, StageConfig
from LiverSegLib.errors import InputError
from LiverSegLib.pipeline.box import Box, coarse_gate, coarse_liver, coarse_liver_box
from LiverSegLib.pipeline.checks import check_segmentable, ct_intensity_warning
from LiverSegLib.pipeline.geometry import labelmap_to_original, needs_resampling, to_axial_grid, to_canonical
from LiverSegLib.pipeline.grids import sample_to_native, stage_shape
from LiverSegLib.pipeline.plausibility import plausibility_warnings
from LiverSegLib.pipeline.postprocess import largest_component, lesion_table, prune_lesions
from LiverSegLib.pipeline.stage import SliceStage, StageModel, StageOutput, stage_grid
from LiverSegLib.registry import Registry, load_registry
from LiverSegLib.types import LESION_LABEL, LIVER_LABEL, SegmentationResult, Volume

__all__ = ["Predictor", "resolve_device", "ProgressCallback"]

ProgressCallback = Callable[[str, float], None]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without CUDA is an :class:`InputError`."""
    if isinstance(device, torch.device):
        return device
    name = str(device).lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("--device cuda was requested but no CUDA GPU is available here; use --device cpu or auto")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise InputError(f"unknown device {device!r}; use auto, cpu or cuda")


class Predictor:
    """Loads a model once and segments any number of volumes with it.

    Args:
        model: a model id from the catalogue, a :class:`ModelConfig`, or ``None`` for the default model.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (``"cuda:1"`` ...).
        registry: catalogue to resolve ids in (the shipped one plus the user's by default).
        verify: check each weight file's sha256 against the config before loading it.
        runtime: what executes the networks (:data:`~LiverSegLib.config.RUNTIMES`): ``"auto"`` runs a stage that has
            an ONNX export with OpenVINO (else ONNX Runtime) on the CPU when installed, and torch otherwise.
        precision: the ONNX engines' arithmetic (:data:`~LiverSegLib.config.PRECISIONS`); ``"auto"`` is bfloat16
            where the CPU has it natively (OpenVINO), float32 elsewhere.
        threads: CPU threads of the ONNX engines (``None``: the engine's choice; torch's pool is set apart, see
            :func:`~LiverSegLib.runs.cpu.configure_torch_threads`).

    Example::

        predictor = Predictor()                 # default model, GPU when present
        result = predictor.predict(volume)      # SegmentationResult, labelmap on volume's grid
    """

    def __init__(self, model: str | ModelConfig | None = None, device: str | torch.device = "auto",
                 registry: Registry | None = None, verify: bool = True, runtime: str = "auto",
                 precision: str = "auto", threads: int | None = None) -> None:
        if runtime not in RUNTIMES:
            raise InputError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        if precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.device = resolve_device(device)
        if runtime in ("openvino", "onnxruntime") and self.device.type != "cpu":
            raise InputError(f"the {runtime} runtime runs on the CPU; use --device cpu, or --runtime torch on the GPU")
        if isinstance(model, ModelConfig):
            self.model = model
        else:
            registry = registry or load_registry()
            self.model = registry.get(model)
        options = (runtime, precision, threads, verify)
        self.coarse = self._load_stage(self.model.coarse, *options)
        self.fine = self._load_stage(self.model.fine, *options) if self.model.fine is not None else None

    def _load_stage(self, stage: StageConfig, runtime: str, precision: str, threads: int | None,
                    verify: bool) -> StageModel | SliceStage:
        """The stage on the engine ``runtime`` asks for: an ONNX engine where the stage has an export, else torch."""
        engine = _onnx_engine(stage, runtime, self.device)
        if engine is None:
            if precision == "bf16":
                raise InputError("bf16 inference needs an ONNX runtime (--runtime openvino); torch runs float32")
            return StageModel(stage, self.model.weight_path(stage.weights), self.device, verify)
        from LiverSegLib.pipeline.onnx_stage import OnnxStage

        assert stage.onnx is not None
        wanted = "fp32" if precision == "auto" else precision
        return OnnxStage(stage, self.model.weight_path(stage.onnx.file), engine, wanted, threads)

    @property
    def runtimes(self) -> dict[str, str]:
        """What runs each stage, e.g. ``{"coarse": "openvino bf16", "fine": "openvino bf16"}``."""
        return {role: _runtime_name(m) for role, m in (("coarse", self.coarse), ("fine", self.fine)) if m is not None}

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "auto", **options) -> Predictor:
        """A single-network model from a self-describing checkpoint (e.g. one written by training).

        A liver-only checkpoint gives a liver-only result; a 3-class one is used as both the coarse and the fine
        stage (at its own preprocessing). A checkpoint has no ONNX export, so torch runs it; ``options``
        (``runtime``, ``precision``, ``threads``) are checked as for a catalogue model.
        """
        from LiverSegLib.pipeline.checkpoint_model import model_from_checkpoint

        return cls(model_from_checkpoint(path), device=device, verify=True, **options)

    # ------------------------------------------------------------------ public API
    def predict(self, volume: Volume, progress: ProgressCallback | None = None,
                lesion_threshold: float | None = None, quick: bool = False) -> SegmentationResult:
        """Segment the liver and liver lesions of a CT volume.

        Args:
            volume: the CT (HU) on any grid and stored orientation.
            progress: called as ``progress(stage, fraction)``; raising :class:`CancelledError` from it cancels.
            lesion_threshold: overrides the model's pruning threshold (Han: 0.80).
            quick: run both stages on the model's coarse ``quick_spacing_xyz`` grid (3 mm by default) instead of the
                coarse spacing and the native resolution: several times faster on a slow CPU, coarser boundaries.

        Returns:
            A :class:`SegmentationResult` whose labelmap lies exactly on ``volume``'s grid.
        """
        threshold = self.model.cascade.lesion_threshold if lesion_threshold is None else float(lesion_threshold)
        if not 0.0 <= threshold <= 1.0:
            raise InputError(f"lesion threshold must be between 0 and 1, got {threshold}")
        report = _Reporter(progress)
        timings: dict[str, float] = {}
        warnings: list[str] = []
        t0 = time.perf_counter()
        check_segmentable(volume)
        warning = ct_intensity_warning(volume.array_zyx)
        if warning:
            warnings.append(warning)
        if needs_resampling(volume):  # oblique: segment on an axial grid, labels mapped back (geometry.py)
            axial, to_original = to_axial_grid(volume)
            resample_s = time.perf_counter() - t0
            result = self.predict(axial, progress, lesion_threshold, quick)
            result.timings_s["resample"] = resample_s
            return labelmap_to_original(result, volume, to_original)
        canonical, orientation = to_canonical(volume)
        timings["prepare"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        quick_spacing = self.model.cascade.quick_spacing_xyz if quick else None
        coarse_fg, coarse_shape = self._run_coarse(canonical, report, quick_spacing)
        timings["coarse"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        native_shape = canonical.array_zyx.shape
        liver_c = coarse_liver(coarse_fg, native_shape, canonical.spacing_xyz, self.model.cascade)  # box and gate
        box, coarse_liver_ml = coarse_liver_box(coarse_fg, native_shape, canonical.spacing_xyz, self.model.cascade,
                                                liver_c)
        if box.fallback:
            warnings.append(f"fine stage ran on the whole volume: {box.fallback}")
        timings["box"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        if self.fine is not None:
            fg, lesion = self._run_fine(canonical, box, report, quick_spacing)
        else:
            fg = sample_to_native(coarse_fg, (0, 0, 0), np.asarray(native_shape) / np.asarray(coarse_shape), box)
            lesion = None
        if self.fine is not None and self.model.cascade.coarse_liver_weight > 0.0:
            fg = self._blend_coarse(fg, coarse_fg, native_shape, coarse_shape, box)
        if self.fine is not None and self.model.cascade.coarse_gate_mm is not None:
            gate = coarse_gate(coarse_fg, native_shape, box, self.model.cascade, canonical.spacing_xyz, liver_c)
            fg = np.where(gate, fg, np.float16(0))
            lesion = np.where(gate, lesion, np.float16(0)) if lesion is not None else None
        timings["fine"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        report("post", 0.0)
        labels_box, lesions, pruning = self._postprocess(canonical, box, fg, lesion, threshold)
        full = np.zeros(native_shape, np.uint8)
        full[box.slices] = labels_box
        # on the canonical grid: axis 0 is the scan range, whose ends tell a liver cut by the field of view
        warnings += plausibility_warnings(full, canonical.spacing_xyz, self.model.cascade)
        labelmap = volume.with_array(np.ascontiguousarray(orientation.invert(full)))
        liver_voxels = int(np.count_nonzero(labels_box))
        lesion_voxels = int(np.count_nonzero(labels_box == LESION_LABEL))
        timings["post"] = time.perf_counter() - t0
        report("post", 1.0)

        present = {LIVER_LABEL} | ({LESION_LABEL} if self.fine is not None and self.fine.stage.has_lesion else set())
        return SegmentationResult(
            labelmap=labelmap,
            labels=[lb for lb in self.model.labels if lb.value in present],
            lesions=lesions,
            liver_volume_ml=liver_voxels * volume.voxel_volume_ml,
            lesion_volume_ml=lesion_voxels * volume.voxel_volume_ml,
            model_id=self.model.id,
            model_version=self.model.version,
            timings_s=timings,
            # out-of-memory fallbacks of either stage (they last for this predictor's life, so they are repeated)
            warnings=warnings + [w for m in (self.coarse, self.fine) if m is not None for w in m.warnings],
            details={
                "device": ", ".join(sorted({str(m.device) for m in (self.coarse, self.fine) if m is not None})),
                "runtime": self.runtimes,
                "lesion_threshold": threshold,
                "lesions_removed_by_threshold": pruning[0],
                "lesion_voxels_removed_by_threshold": pruning[1],
                "coarse_liver_ml": round(coarse_liver_ml, 2),
                "box_fallback": box.fallback,
                "box_note": box.note,
                "box_canonical_zyx": {"start": list(box.start), "stop": list(box.stop)},
                "orientation": {"axes": list(orientation.axes), "flips": list(orientation.flips)},
                "lesion_model": self.fine is not None and self.fine.stage.has_lesion,
                "quick": quick,
            },
        )

    def coarse_livers(self, volume: Volume) -> tuple[Volume, Volume]:
        """The coarse stage's liver on ``volume``'s grid: its largest 3D component, and the same after the neck cut.

        What the cut takes off (``CascadeConfig.coarse_neck_mm``; both equal when the rule is off) is tissue the
        coarse network joined to the liver that the cascade then decided is not liver, such as the heart above the
        dome: :mod:`~LiverSegLib.training.pseudo_labels` uses it as a hard negative.

        Raises:
            InputError: for a volume :meth:`predict` would refuse, or an oblique one (resample it to axial first).
        """
        check_segmentable(volume)
        if needs_resampling(volume):
            raise InputError("the coarse livers need an axial volume; resample the oblique scan first")
        canonical, orientation = to_canonical(volume)
        coarse_fg, shape = self._run_coarse(canonical, _Reporter(None))
        native = canonical.array_zyx.shape
        whole = largest_component(coarse_fg >= self.model.cascade.coarse_threshold)
        cut = coarse_liver(coarse_fg, native, canonical.spacing_xyz, self.model.cascade)
        scale = np.asarray(native, float) / np.asarray(shape, float)
        out = []
        for mask in (whole, cut):
            on_native = sample_to_native(mask.astype(np.float32), (0, 0, 0), scale, Box.whole(native, "")) >= 0.5
            out.append(volume.with_array(np.ascontiguousarray(orientation.invert(on_native.astype(np.uint8)))))
        return out[0], out[1]

    # ------------------------------------------------------------------ stages
    def _run_coarse(self, canonical: Volume, report: _Reporter, spacing_override=None,
                    ) -> tuple[np.ndarray, tuple[int, int, int]]:
        stage = self.coarse.stage
        spacing = spacing_override or stage.spacing_xyz
        shape = stage_shape(canonical.array_zyx.shape, canonical.spacing_xyz, spacing)
        report("coarse", 0.0)
        grid = stage_grid(canonical.array_zyx, canonical.spacing_xyz, stage, spacing)
        z, progress = np.arange(shape[0]), lambda f: report("coarse", f)
        if not (self.coarse.stage.members > 1 and self.model.cascade.coarse_member_union):
            return self.coarse.predict(grid, z, progress).foreground, shape
        out = self.coarse.predict(grid, z, progress, keep_members=True)
        return _within_member_livers(out, canonical, self.model.cascade), shape

    def _run_fine(self, canonical: Volume, box: Box, report: _Reporter, spacing_override=None,
                  ) -> tuple[np.ndarray, np.ndarray | None]:
        assert self.fine is not None
        stage = self.fine.stage
        half = stage.context_slices // 2
        nz = canonical.array_zyx.shape[0]
        z0, z1 = max(0, box.start[0] - half), min(nz, box.stop[0] + half)  # neighbours for the 2.5D stacks
        (_, ys, xs) = box.slices
        report("fine", 0.0)
        spacing = spacing_override or _fine_grid(stage.spacing_xyz, canonical.spacing_xyz, self.model.cascade)
        native = all(s is None for s in spacing)
        # Histogram equalisation is defined on whole axial slices (as in training): such a stage sees full slices.
        full_slices = stage.normalization == "histeq"
        crop = canonical.array_zyx[z0:z1] if full_slices else canonical.array_zyx[z0:z1, ys, xs]
        grid = stage_grid(crop, canonical.spacing_xyz, stage, spacing)
        # the box's own slices when z stays native (the neighbours only feed the stacks)
        centres = (np.arange(box.start[0] - z0, box.stop[0] - z0) if spacing[2] is None
                   else np.arange(grid.shape[0]))
        out = self.fine.predict(grid, centres, lambda f: report("fine", f))
        if native:
            if full_slices:
                return out.foreground[:, ys, xs], (out.lesion[:, ys, xs] if out.lesion is not None else None)
            return out.foreground, out.lesion
        scale = np.asarray(crop.shape, float) / np.asarray(grid.shape, float)
        origin = (z0, 0, 0) if full_slices else (z0, box.start[1], box.start[2])
        if spacing[2] is None:  # z kept native: the output holds the box's own slices only (the centres)
            scale[0], origin = 1.0, (box.start[0], *origin[1:])
        fg = sample_to_native(out.foreground, origin, scale, box)
        lesion = sample_to_native(out.lesion, origin, scale, box) if out.lesion is not None else None
        return fg, lesion

    def _blend_coarse(self, fine_fg: np.ndarray, coarse_fg: np.ndarray, native_shape: tuple[int, int, int],
                      coarse_shape: tuple[int, int, int], box: Box) -> np.ndarray:
        """``(1 - w) * fine + w * coarse`` liver probability in the box (``CascadeConfig.coarse_liver_weight``)."""
        w = np.float16(self.model.cascade.coarse_liver_weight)
        coarse = sample_to_native(coarse_fg, (0, 0, 0), np.asarray(native_shape) / np.asarray(coarse_shape), box)
        # in float16 and in place: a large box costs 2 bytes per voxel more, not 12 (probabilities need no more)
        coarse *= w
        blended = np.multiply(fine_fg, np.float16(1) - w, dtype=np.float16)
        blended += coarse
        return blended

    def _postprocess(self, canonical: Volume, box: Box, fg: np.ndarray, lesion: np.ndarray | None,
                     threshold: float):
        """Han section 3.1 (largest component of liver+lesion) and section 4 (lesion pruning)."""
        if lesion is None:
            liver = largest_component(fg >= 0.5)
            return liver.astype(np.uint8), [], (0, 0)
        # argmax over (background, liver, lesion) = (1 - fg, fg - lesion, lesion)
        fg32 = fg.astype(np.float32)
        les32 = lesion.astype(np.float32)
        p_liver = fg32 - les32
        is_fg = fg32 > 1.0 - fg32
        is_lesion = is_fg & (les32 > p_liver)
        del fg32, p_liver
        liver = largest_component(is_fg)
        pruning = prune_lesions(is_lesion & liver, lesion, threshold)
        labels = liver.astype(np.uint8)
        labels[pruning.components > 0] = LESION_LABEL
        m = canonical.index_to_physical_matrix()
        shift = np.eye(4)
        shift[:3, 3] = box.start[::-1]  # box index (i, j, k) -> canonical index
        records = lesion_table(pruning.components, pruning.max_probability, canonical.array_zyx[box.slices],
                               m @ shift, canonical.voxel_volume_ml, tuple(canonical.spacing_xyz[::-1]))
        return labels, records, (pruning.removed, pruning.removed_voxels)


def _within_member_livers(out: StageOutput, canonical: Volume, cascade: CascadeConfig) -> np.ndarray:
    """The ensemble's mean foreground, zero outside the union of its members' own coarse livers (largest component,
    cut at necks: :func:`~LiverSegLib.pipeline.box.coarse_liver`); ``CascadeConfig.coarse_member_union``."""
    assert out.members is not None
    union = np.zeros(out.foreground.shape, bool)
    for member in out.members:
        union |= coarse_liver(member, canonical.array_zyx.shape, canonical.spacing_xyz, cascade)
    return np.where(union, out.foreground, np.float16(0))


def _onnx_engine(stage: StageConfig, runtime: str, device: torch.device) -> str | None:
    """The ONNX engine to run ``stage`` with, or ``None`` for torch (no export, a GPU, or no engine installed)."""
    from LiverSegLib.pipeline.onnx_stage import engine_available

    if runtime == "torch" or stage.onnx is None or device.type != "cpu":
        return None
    if runtime != "auto":
        return runtime  # OnnxStage says so in one line when it is not installed
    return next((e for e in ("openvino", "onnxruntime") if engine_available(e)), None)


def _runtime_name(model: StageModel | SliceStage) -> str:
    if isinstance(model, StageModel):
        return f"torch {'float16 autocast' if model.device.type == 'cuda' else 'fp32'} on {model.device}"
    return getattr(model, "runtime", type(model).__name__)


def _fine_grid(stage_xyz: tuple, native_xyz: tuple, cascade: CascadeConfig) -> tuple:
    """The fine stage's grid: its native in-plane axes set to ``cascade.fine_inplane_mm``, or coarsened to
    ``cascade.fine_inplane_floor_mm`` where the scan is finer than it (axes the stage fixes itself stay)."""
    fixed, floor_mm = cascade.fine_inplane_mm, cascade.fine_inplane_floor_mm
    if fixed is not None:
        return tuple(fixed if axis < 2 and target is None else target for axis, target in enumerate(stage_xyz))
    if floor_mm is None:
        return stage_xyz
    return tuple(floor_mm if axis < 2 and target is None and native_xyz[axis] < floor_mm else target
                 for axis, target in enumerate(stage_xyz))


class _Reporter:
    """Forwards progress; a callback that raises (e.g. :class:`CancelledError`) stops the run there."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self.callback = callback

    def __call__(self, stage: str, fraction: float) -> None:
        if self.callback is not None:
            self.callback(stage, float(fraction))
