"""Synthetic liver lesions painted into real livers: extra tumour examples without extra manual labels.

The idea follows Hu et al., "Label-Free Liver Tumor Segmentation", CVPR 2023: a lesion is a deformed ellipsoid
placed inside the liver, filled with a textured intensity a little below (or above) the surrounding parenchyma and
blended in with a soft margin, so that a network trained on it learns real tumours. This is LiverSeg's own
implementation of that idea, with these choices:

* **Shape** -- an ellipsoid with random axes (up to about 1.8:1) and a random 3D rotation, warped by a smooth random
  displacement field (Gaussian-filtered noise on a coarse grid, interpolated with cubic splines; scaled down where
  needed so that it never folds or changes distances by more than a factor 2) and clipped to the liver mask, so a
  lesion never leaves the liver.
* **Placement** -- the centre is drawn among liver voxels at least ``radius + margin_mm`` from the liver surface
  (Euclidean distance in mm, image border counted as surface); in a liver too thin for that the deepest voxels are
  used and the radius shrinks. With ``edge_probability`` a lesion is subcapsular instead: its centre lies
  0.25-0.75 radii below the surface, so the liver mask cuts it and it reaches the capsule (the large peripheral
  tumours that a model trained only on deep lesions leaves outside the liver).
* **Intensity** -- the smooth part of the image under the lesion is replaced by the local liver level (median of
  the original liver voxels around the centre) + a random shift + Gaussian-filtered texture, while the scanner
  noise of the original voxels is kept, so the lesion's grain matches the scan's. An optional enhancing rim adds a
  positive shift in a thin shell just inside the margin. The change is blended with a soft mask that falls from 1
  to 0 over ``2 * edge_blur_mm`` around the surface (0.5 on it), so the boundary is not a hard step.
* **Label** -- voxels whose soft mask exceeds 0.5 inside the liver become lesion (2); where lesions overlap, the
  union of their masks ``1 - prod(1 - soft)`` counts, which is exactly the fraction by which the (convex, sequential)
  blends moved the voxel. Every voxel labelled as a new lesion therefore moved at least half-way to the lesion
  intensity, and a voxel outside the new label changes only within about ``edge_blur_mm`` (times the local stretch
  of the warp) of the lesion surface; outside the liver nothing changes. Existing lesions keep label 2 (new lesions
  may overlap them).

Arrays are indexed ``[z, y, x]`` and ``spacing_xyz`` gives the voxel size of array axes 2, 1, 0 (LiverSeg's
convention; :class:`RandSynthLesiond` documents the MONAI side).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_data_type, convert_to_dst_type
from scipy import ndimage

from LiverSegLib.types import LESION_LABEL, LIVER_LABEL

__all__ = ["LesionSynthesisConfig", "liver_depth", "synthesize_lesions", "RandSynthLesiond"]

_MIN_LIVER_VOXELS = 64  # below a 4x4x4 cube there is no room for a lesion with a margin
_MAX_WARP_STRETCH = 0.5  # largest Jacobian norm of the displacement field (see _paint_one)


@dataclass(frozen=True)
class LesionSynthesisConfig:
    """How :func:`synthesize_lesions` draws lesions. Ranges are inclusive ``(low, high)``, drawn uniformly.

    Args:
        n_lesions: number of lesions per call (1-4: LiTS livers with tumours mostly hold a few).
        radius_mm: nominal radius (4-20 mm: 8-40 mm diameters, the range that matters clinically and in LiTS;
            smaller ones are below a 3 mm CT's resolution).
        hu_shift: lesion level relative to the local liver in HU. The default (-60, -20) gives hypodense lesions,
            the common case (metastases, HCC wash-out) in portal venous CT; a positive range such as (20, 60) gives
            hyperdense ones.
        texture_sigma_mm: grain of the lesion texture (1.5 mm: a few voxels, like tumour heterogeneity).
        texture_std_hu: texture amplitude (8 HU: visible but below typical CT noise of 10-20 HU).
        deform_strength: displacement of the ellipsoid as a fraction of its radius (0.25: lobulated but compact;
            0 keeps a plain ellipsoid).
        edge_blur_mm: half-width of the soft margin (1.5 mm: partial volume of about one voxel in-plane; 0 gives a
            hard edge).
        rim_probability: chance that a lesion gets an enhancing rim (0.3, as in the project's phantoms).
        rim_hu: rim level relative to the local liver in HU (10-40: slightly brighter than the liver).
        rim_width_mm: rim thickness (2 mm).
        margin_mm: wanted distance between the lesion and the liver surface (2 mm: lesions stay inside the liver
            rather than bulging out of it; the liver mask clips them anyway).
        probability: chance to insert anything at all (1.0: always; lower it to keep some original cases).
        edge_probability: chance that a lesion is subcapsular (centre 0.25-0.75 radii below the liver surface,
            clipped by it) rather than at least ``radius + margin_mm`` deep (0: never, the original placement).

    Raises:
        ValueError: a range with low > high, negative sizes, or a probability outside [0, 1].
    """

    n_lesions: tuple[int, int] = (1, 4)
    radius_mm: tuple[float, float] = (4.0, 20.0)
    hu_shift: tuple[float, float] = (-60.0, -20.0)
    texture_sigma_mm: float = 1.5
    texture_std_hu: float = 8.0
    deform_strength: float = 0.25
    edge_blur_mm: float = 1.5
    rim_probability: float = 0.3
    rim_hu: tuple[float, float] = (10.0, 40.0)
    rim_width_mm: float = 2.0
    margin_mm: float = 2.0
    probability: float = 1.0
    edge_probability: float = 0.0

    def __post_init__(self) -> None:
        for name in ("n_lesions", "radius_mm", "hu_shift", "rim_hu"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise ValueError(f"{name} must be a range (low, high) with low <= high, got {(lo, hi)}")
        if self.n_lesions[0] < 0 or self.radius_mm[0] <= 0:
            raise ValueError("n_lesions must be >= 0 and radius_mm > 0")
        for name in ("texture_sigma_mm", "texture_std_hu", "deform_strength", "edge_blur_mm", "rim_width_mm",
                     "margin_mm"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("rim_probability", "probability", "edge_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly distributed 3D rotation (QR of a Gaussian matrix, signs fixed so that it is Haar-uniform)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], spacing: np.ndarray, cell_mm: float,
                  channels: int) -> np.ndarray:
    """``channels`` smooth random fields of unit standard deviation on a ``shape`` grid, varying over ``cell_mm``.

    Noise on a coarse grid (one node per ``cell_mm``), blurred and spline-interpolated: the cost does not grow with
    the smoothness, unlike filtering full-resolution noise with a wide Gaussian.
    """
    extent = np.asarray(shape) * spacing
    coarse = tuple(int(n) for n in np.maximum(np.ceil(extent / cell_mm).astype(int) + 3, 4))
    coords = np.meshgrid(*[np.arange(n) * (s / cell_mm) + 1.0 for n, s in zip(shape, spacing, strict=True)],
                         indexing="ij")
    out = np.empty((channels, *shape), dtype=np.float32)
    for c in range(channels):
        noise = ndimage.gaussian_filter(rng.standard_normal(coarse), sigma=1.0, mode="wrap")
        noise /= max(float(noise.std()), 1e-6)
        out[c] = ndimage.map_coordinates(noise, coords, order=3, mode="nearest")
    return out


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _lesion_box(centre: np.ndarray, reach_mm: float, spacing: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    half = np.ceil(reach_mm / spacing).astype(int) + 1
    return tuple(slice(max(int(c - h), 0), min(int(c + h) + 1, n)) for c, h, n in zip(centre, half, shape,
                                                                                       strict=True))


def _paint_one(img: np.ndarray, weight: np.ndarray, orig: np.ndarray, liver: np.ndarray, centre: np.ndarray,
               radius: float, spacing: np.ndarray, cfg: LesionSynthesisConfig, rng: np.random.Generator,
               liver_level: float) -> bool:
    """Blend one lesion centred at voxel ``centre`` into ``img`` and its soft mask into ``weight`` (in place).

    ``img`` is the image being edited, ``orig`` the original one, ``weight`` the union of the soft masks so far;
    all on one grid. Returns False (and changes nothing) when the lesion covers no voxel with a soft mask > 0.5.
    """
    axes = radius * np.exp(rng.uniform(-0.3, 0.3, 3))
    rot = _random_rotation(rng)
    amp = cfg.deform_strength * radius
    shift = rng.uniform(*cfg.hu_shift)
    rim = rng.random() < cfg.rim_probability
    rim_shift = rng.uniform(*cfg.rim_hu)
    reach = float(axes.max()) + 3.0 * amp + cfg.edge_blur_mm + float(spacing.max())
    box = _lesion_box(centre, reach, spacing, img.shape)
    shape = tuple(s.stop - s.start for s in box)
    # Offsets from the centre in mm, warped by the displacement field.
    pos = [((np.arange(s.start, s.stop) - c) * sp).reshape([-1 if a == i else 1 for a in range(3)])
           for i, (s, c, sp) in enumerate(zip(box, centre, spacing, strict=True))]
    warp = _smooth_field(rng, shape, spacing, cell_mm=0.75 * radius, channels=3) if amp > 0 else None
    if warp is not None:
        # Keep the warp gentle enough that it never folds and distances change by at most a factor 2 (what keeps the
        # soft margin thin): scale it down where its Jacobian (Frobenius norm) would exceed 0.5.
        np.clip(warp, -3.0, 3.0, out=warp)  # and within the box, which allows for 3 amplitudes
        jac = sum(np.gradient(warp[c], spacing[a], axis=a) ** 2 for c in range(3) for a in range(3) if shape[a] > 1)
        stretch = amp * float(np.sqrt(np.max(jac)))
        amp = amp * min(1.0, _MAX_WARP_STRETCH / stretch) if stretch > 0 else amp
    pts = [p + amp * warp[i] if warp is not None else np.broadcast_to(p, shape) for i, p in enumerate(pos)]
    local = [sum(rot[i, j] * pts[i] for i in range(3)) for j in range(3)]  # coordinates along the lesion's axes
    level = np.sqrt(sum((local[j] / axes[j]) ** 2 for j in range(3)))  # 1 on the ellipsoid surface
    rho = np.sqrt(sum(p**2 for p in pts))
    # Signed distance to the surface along the ray from the centre: rho * (1 - 1/level); -min(axes) at the centre.
    dist = np.where(level > 1e-6, rho - np.divide(rho, level, out=np.zeros_like(rho), where=level > 1e-6),
                    -float(axes.min()))
    if cfg.edge_blur_mm > 0:
        soft = 1.0 - _smoothstep((dist + cfg.edge_blur_mm) / (2.0 * cfg.edge_blur_mm))
    else:
        soft = (dist <= 0).astype(np.float64)
    liver_box = liver[box]
    soft = soft * liver_box  # clipped to the liver: nothing outside it ever changes
    if not np.any(soft > 0.5):
        return False
    texture = _smooth_field(rng, shape, spacing, cell_mm=max(cfg.texture_sigma_mm, 1e-3), channels=1)[0] \
        if cfg.texture_sigma_mm > 0 else rng.standard_normal(shape)
    target = liver_level + shift + cfg.texture_std_hu * texture
    if rim:  # a Gaussian shell centred half a rim width inside the surface
        half = max(cfg.rim_width_mm / 2.0, 1e-3)
        shell = np.exp(-(((dist + half) / half) ** 2))
        target = target + shell * (rim_shift - shift)
    # Keep the scan's noise: the original image minus its 1-voxel Gaussian blur, clipped at 3 robust standard
    # deviations of the liver's so that vessel edges do not shine through the lesion.
    ref = orig[box].astype(np.float64)
    noise = ref - ndimage.gaussian_filter(ref, sigma=1.0, mode="nearest")
    sigma = 1.4826 * float(np.median(np.abs(noise[liver_box])))
    target = target + np.clip(noise, -3.0 * sigma, 3.0 * sigma)
    # Convex blend towards the lesion; overlapping lesions compose, and the union of their soft masks
    # (1 - prod(1 - soft)) is the fraction by which a voxel has moved -- the label is where it exceeds 0.5.
    region = img[box]
    img[box] = region + (soft * (target - region)).astype(img.dtype)
    weight[box] = 1.0 - (1.0 - weight[box]) * (1.0 - soft)
    return True


def _liver(label: np.ndarray) -> np.ndarray:
    # Liver and lesion only: a training label also marks the organs next to the liver (HARD_NEGATIVE_LABEL), and
    # a lesion painted there would teach the network that kidney or stomach is liver.
    return (label == LIVER_LABEL) | (label == LESION_LABEL)


def liver_depth(label_zyx: np.ndarray, spacing_xyz: Sequence[float]) -> np.ndarray | None:
    """Depth (mm) below the liver surface of every voxel of the liver's bounding box in ``label_zyx`` (0 outside the
    liver; the box border counts as surface), or ``None`` without liver.

    :func:`synthesize_lesions` computes it on every call; a caller that paints the same label many times (the
    training samplers) computes it once and passes it as ``depth``: the distance transform is most of the cost.
    """
    liver = _liver(np.asarray(label_zyx))
    if not liver.any():
        return None
    bbox = ndimage.find_objects(liver.astype(np.uint8))[0]
    return _depth(liver[bbox], np.asarray(spacing_xyz, dtype=np.float64)[::-1])


def _depth(liver_box: np.ndarray, spacing_zyx: np.ndarray) -> np.ndarray:
    depth = ndimage.distance_transform_edt(np.pad(liver_box, 1), sampling=spacing_zyx)[1:-1, 1:-1, 1:-1]
    return depth.astype(np.float32)  # 1e-5 mm is plenty; a sampler keeps one per case (half the memory of float64)


def synthesize_lesions(
    image_zyx: np.ndarray,
    label_zyx: np.ndarray,
    spacing_xyz: Sequence[float],
    config: LesionSynthesisConfig | None = None,
    rng: np.random.Generator | None = None,
    depth: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Insert random synthetic lesions into the liver of a CT and its labelmap.

    Args:
        image_zyx: CT in HU, indexed ``[z, y, x]``.
        label_zyx: labelmap of the same shape (0 background, 1 liver, 2 lesion); the liver is labels 1 and 2.
            Other values (a training label's hard-negative organs, 3) are neither painted nor relabelled.
        spacing_xyz: voxel size in mm of array axes 2, 1, 0.
        config: what to draw; default :class:`LesionSynthesisConfig()`.
        rng: random generator; the same generator state gives identical outputs. Default: a fresh unseeded one.
        depth: :func:`liver_depth` of this label and spacing, computed once by a caller that paints the same label
            again and again (the result is the same as without it); ``None``: computed here.

    Returns:
        ``(image, label)``: new arrays (the inputs are never modified). The image is floating point (float32 for
        integer input, else the input's type); the label keeps the input's dtype, with new lesion voxels set to 2.
        A liver too small for a lesion (fewer than 64 voxels, or none), or a draw above ``config.probability``,
        gives unchanged copies.

    Raises:
        ValueError: image and label of different shapes, not 3D, a spacing that is not 3 positive numbers, or a
            ``depth`` that does not fit the label's liver box.
    """
    image, label = np.asarray(image_zyx), np.asarray(label_zyx)
    if image.ndim != 3 or image.shape != label.shape:
        raise ValueError(f"image and label must be 3D arrays of one shape, got {image.shape} and {label.shape}")
    spacing = np.asarray(spacing_xyz, dtype=np.float64)[::-1].copy()  # per array axis (z, y, x)
    if spacing.shape != (3,) or not np.all(spacing > 0):
        raise ValueError(f"spacing_xyz must be 3 positive numbers, got {spacing_xyz}")
    cfg = config if config is not None else LesionSynthesisConfig()
    rng = rng if rng is not None else np.random.default_rng()
    out_img = image.astype(image.dtype if np.issubdtype(image.dtype, np.floating) else np.float32, copy=True)
    out_lab = label.copy()
    liver = _liver(label)
    if rng.random() >= cfg.probability or np.count_nonzero(liver) < _MIN_LIVER_VOXELS:
        return out_img, out_lab

    # Work on the liver's bounding box only: lesions never leave the liver. Depth of every liver voxel below the
    # liver surface (mm); the box border counts as surface (a lesion centred there would be cut by the field of view).
    bbox = ndimage.find_objects(liver.astype(np.uint8))[0]
    liver_c, orig_c, lab_c, img_c = liver[bbox], image[bbox], label[bbox], out_img[bbox]  # img_c: a view
    if depth is None:
        depth = _depth(liver_c, spacing)
    elif depth.shape != liver_c.shape:
        raise ValueError(f"depth of shape {depth.shape} does not fit this label's liver box {liver_c.shape}")
    deepest = float(depth.max())
    parenchyma = orig_c[lab_c == LIVER_LABEL] if np.any(lab_c == LIVER_LABEL) else orig_c[liver_c]
    global_level = float(np.median(parenchyma))
    weight = np.zeros(liver_c.shape, dtype=np.float32)

    for _ in range(int(rng.integers(cfg.n_lesions[0], cfg.n_lesions[1] + 1))):
        radius = float(rng.uniform(*cfg.radius_mm))
        if deepest < radius + cfg.margin_mm:  # a thin liver: the deepest voxels and a smaller lesion
            radius = max(deepest - cfg.margin_mm, 0.5 * deepest)
        candidates = np.empty(0, dtype=np.intp)
        if cfg.edge_probability > 0 and rng.random() < cfg.edge_probability:
            # subcapsular: the centre within the outer 0.25-0.75 radii, so the surface cuts the lesion
            candidates = np.flatnonzero((depth >= 0.25 * radius) & (depth <= 0.75 * radius))
        if len(candidates) == 0:  # deep placement (also where the liver has no subcapsular candidates)
            candidates = np.flatnonzero(depth >= min(radius + cfg.margin_mm, deepest))
        centre = np.array(np.unravel_index(candidates[rng.integers(len(candidates))], depth.shape))
        # Local liver level: median of the original parenchyma within about one lesion size of the centre.
        near = _lesion_box(centre, radius + 10.0, spacing, depth.shape)
        local = orig_c[near][lab_c[near] == LIVER_LABEL]
        level = float(np.median(local)) if local.size >= 20 else global_level
        _paint_one(img_c, weight, orig_c, liver_c, centre, radius, spacing, cfg, rng, level)
    out_lab[bbox][(weight > 0.5) & liver_c] = LESION_LABEL
    return out_img, out_lab


class RandSynthLesiond(RandomizableTransform, MapTransform):
    """MONAI dictionary transform around :func:`synthesize_lesions`, for a training ``Compose``.

    Args:
        keys: the image key and the label key, in that order.
        config: lesion parameters; ``config.probability`` is the chance to act on a sample.
        spacing_key: dictionary key holding the voxel spacing ``(x, y, z)`` in mm of array axes 2, 1, 0 (last,
            middle, first spatial axis); used first when present.
        spacing_xyz: fixed spacing used when the dictionary has no ``spacing_key``; otherwise a ``MetaTensor``
            image's ``pixdim`` is used (reversed to that order).
        allow_missing_keys: return the sample unchanged when a key is missing instead of raising.

    Arrays may be numpy or torch (``MetaTensor`` keeps its metadata), shaped ``(1, Z, Y, X)`` or ``(Z, Y, X)``. The
    algorithm only needs each array axis' spacing, so MONAI ``LoadImage`` arrays ordered ``(1, X, Y, Z)`` work too,
    with the spacing given for that order reversed (or taken from ``pixdim``). The image comes back as floating
    point, the label in its own dtype. ``set_random_state(seed)`` makes the results reproducible.

    Raises:
        ValueError: not exactly two keys; arrays of other shapes; no spacing available.
    """

    def __init__(self, keys: KeysCollection = ("image", "label"), config: LesionSynthesisConfig | None = None,
                 spacing_key: str = "spacing", spacing_xyz: Sequence[float] | None = None,
                 allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)  # config.probability decides, inside synthesize_lesions
        if len(self.keys) != 2:
            raise ValueError(f"RandSynthLesiond needs exactly two keys (image, label), got {self.keys}")
        self.config = config if config is not None else LesionSynthesisConfig()
        self.spacing_key = spacing_key
        self.spacing_xyz = None if spacing_xyz is None else tuple(float(s) for s in spacing_xyz)
        self._seed = 0

    def randomize(self, data: Any = None) -> None:
        """Draw the seed of this call's generator from the transform's random state."""
        super().randomize(None)
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def _spacing(self, d: Mapping[Hashable, Any], image: Any) -> tuple[float, ...]:
        if self.spacing_key in d:
            values = convert_data_type(d[self.spacing_key], np.ndarray)[0]
            return tuple(float(v) for v in np.asarray(values, dtype=np.float64).ravel())
        if self.spacing_xyz is not None:
            return self.spacing_xyz
        if isinstance(image, MetaTensor):
            return tuple(float(v) for v in np.asarray(image.pixdim, dtype=np.float64)[::-1])
        raise ValueError(f"no spacing: put it under {self.spacing_key!r}, pass spacing_xyz or use a MetaTensor")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        image_key, label_key = self.keys
        if image_key not in d or label_key not in d:
            if self.allow_missing_keys:
                return d
            raise KeyError(f"RandSynthLesiond: key {image_key if image_key not in d else label_key!r} is missing")
        image, label = d[image_key], d[label_key]
        img = np.asarray(convert_data_type(image, np.ndarray)[0])
        lab = np.asarray(convert_data_type(label, np.ndarray)[0])
        channel = img.ndim == 4
        if img.shape != lab.shape or not (img.ndim == 3 or (channel and img.shape[0] == 1)):
            raise ValueError(f"image and label must both be (1, Z, Y, X) or (Z, Y, X), got {img.shape}, {lab.shape}")
        new_img, new_lab = synthesize_lesions(img[0] if channel else img, lab[0] if channel else lab,
                                              self._spacing(d, image), self.config, np.random.default_rng(self._seed))
        if channel:
            new_img, new_lab = new_img[None], new_lab[None]
        # Back to the caller's container (torch/MetaTensor, device); the image stays floating point.
        if isinstance(image, torch.Tensor):
            new_img = convert_to_dst_type(new_img, image, dtype=torch.from_numpy(new_img[:0]).dtype)[0]
        if isinstance(label, torch.Tensor):
            new_lab = convert_to_dst_type(new_lab, label)[0]
        d[image_key], d[label_key] = new_img, new_lab
        return d
