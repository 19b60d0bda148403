"""Label-map-driven synthetic CT: paint a multi-organ label map with CT values of a random contrast phase.

The idea is SynthSeg's (Billot et al., "SynthSeg: Segmentation of brain MRI scans of any contrast and resolution
without retraining", Medical Image Analysis 2023): a network trained on label maps painted with random intensities,
resolutions and artefacts learns shape and context rather than one scanner's look. Written here for CT, where the
intensities are not arbitrary: each structure gets a Hounsfield value drawn around its typical value in one of four
contrast phases (unenhanced, arterial, portal venous, delayed), so that the relations a radiologist relies on hold
(arterial: aorta >> spleen > liver; portal venous: portal vein > liver ~ spleen; unenhanced: liver > spleen), and
then randomised (enhancement strength, per-organ offsets, fatty liver), so that a model cannot tell the liver by its
HU alone and has to use shape and position. Then texture, a smooth bias, partial-volume blur for a random slice
thickness, scanner noise, and lesions (the map's own tumours, painted hypo- or hyperdense or as cysts, plus
:func:`~LiverSegLib.training.synth_lesions.synthesize_lesions`).

Values are typical adult CT numbers (e.g. Bae, Radiology 2010, on contrast enhancement; common textbook ranges for
unenhanced organs); the randomisation deliberately goes beyond them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from LiverSegLib.training.organs import ORGANS
from LiverSegLib.training.synth_anatomy import add_body_layers, add_missing_organs, resample_labels, transplant_liver
from LiverSegLib.training.synth_lesions import LesionSynthesisConfig, _smooth_field, synthesize_lesions
from LiverSegLib.training.synth_thorax import add_thorax

__all__ = ["PHASES", "PHASE_HU", "SynthCTConfig", "paint_ct", "synthesize_ct"]

PHASES: tuple[str, ...] = ("unenhanced", "arterial", "portal", "delayed")

# Typical mean HU per structure and phase (adult, standard contrast protocol).
_O = ORGANS
PHASE_HU: dict[str, dict[int, float]] = {
    "unenhanced": {_O["liver"]: 58, _O["spleen"]: 47, _O["kidney"]: 32, _O["stomach"]: 38, _O["pancreas"]: 42,
                   _O["gallbladder"]: 12, _O["portal_vein"]: 42, _O["vena_cava"]: 42, _O["aorta"]: 44,
                   _O["heart"]: 42, _O["bowel"]: 35, _O["adrenal"]: 30, _O["muscle"]: 50, _O["fat"]: -100,
                   _O["bladder"]: 10, _O["other"]: 35, _O["body"]: 20},
    "arterial": {_O["liver"]: 75, _O["spleen"]: 125, _O["kidney"]: 190, _O["stomach"]: 70, _O["pancreas"]: 115,
                 _O["gallbladder"]: 12, _O["portal_vein"]: 130, _O["vena_cava"]: 80, _O["aorta"]: 320,
                 _O["heart"]: 240, _O["bowel"]: 75, _O["adrenal"]: 60, _O["muscle"]: 55, _O["fat"]: -100,
                 _O["bladder"]: 10, _O["other"]: 50, _O["body"]: 30},
    "portal": {_O["liver"]: 112, _O["spleen"]: 118, _O["kidney"]: 175, _O["stomach"]: 85, _O["pancreas"]: 100,
               _O["gallbladder"]: 12, _O["portal_vein"]: 175, _O["vena_cava"]: 140, _O["aorta"]: 165,
               _O["heart"]: 150, _O["bowel"]: 85, _O["adrenal"]: 70, _O["muscle"]: 60, _O["fat"]: -100,
               _O["bladder"]: 15, _O["other"]: 60, _O["body"]: 35},
    "delayed": {_O["liver"]: 92, _O["spleen"]: 98, _O["kidney"]: 140, _O["stomach"]: 75, _O["pancreas"]: 80,
                _O["gallbladder"]: 12, _O["portal_vein"]: 115, _O["vena_cava"]: 112, _O["aorta"]: 115,
                _O["heart"]: 110, _O["bowel"]: 70, _O["adrenal"]: 60, _O["muscle"]: 60, _O["fat"]: -100,
                _O["bladder"]: 40, _O["other"]: 55, _O["body"]: 35},
}


@dataclass(frozen=True)
class SynthCTConfig:
    """Ranges of :func:`synthesize_ct`, drawn uniformly unless said otherwise.

    Args:
        phase_weights: probabilities of the four :data:`PHASES`.
        enhancement_gain: factor on every organ's enhancement over its unenhanced value (weak or strong bolus).
        organ_jitter_hu: standard deviation of an independent offset per structure.
        fatty_liver_probability: chance of a steatotic liver (unenhanced value drawn in ``fatty_liver_hu``).
        fatty_liver_hu: unenhanced liver values of a fatty liver.
        texture_std_hu / texture_mm: amplitude and grain of the per-structure texture.
        bias_hu: amplitude of a smooth, body-wide bias field (beam hardening, scatter).
        noise_std_hu: scanner noise.
        inplane_spacing_mm / slice_spacing_mm: the random grid of the synthetic scan.
        slice_thickness_ratio: slice thickness as a multiple of the slice spacing (partial-volume blur along z).
        fov_cut_probability: chance of a field of view that cuts one side of the body (and maybe the liver).
        z_margin_mm: how far the scan reaches beyond the liver, up and down (may be negative: a cut liver).
        transplant_probability: chance of replacing the liver by a shape from the donor bank.
        liver_margin_mm: paint only the liver's bounding box plus this margin (a fine stage never looks further than
            its liver box; painting a whole 512 x 512 scan at native resolution costs ten times more).
        add_missing_organs / body_layers: complete the map (:mod:`~LiverSegLib.training.synth_anatomy`).
        thorax_reach_mm: extend the map this far above the liver dome and fill the chest with lungs, heart and
            mediastinum (:mod:`~LiverSegLib.training.synth_thorax`), e.g. ``(50, 110)``; ``None`` (default, the
            recipe of the shipped han-liver weights): leave the map's top as it is.
        heart_detail: paint the heart as myocardium (wall and septum) around blood pools instead of one value.
        heart_iso_probability: with ``heart_detail``, the chance that blood and wall both take the liver's value
            (a late-phase heart can be as grey as the liver: the hard case of HCC-TACE-Seg HCC_006).
        lesion_types: probabilities of hypodense, hyperdense and cystic painting of the map's tumours.
        extra_lesions: synthetic lesions added on top (``None``: none); ``extra_lesion_probability`` of the time.
    """

    phase_weights: tuple[float, float, float, float] = (0.15, 0.2, 0.5, 0.15)
    enhancement_gain: tuple[float, float] = (0.6, 1.35)
    organ_jitter_hu: float = 12.0
    fatty_liver_probability: float = 0.12
    fatty_liver_hu: tuple[float, float] = (5.0, 40.0)
    texture_std_hu: tuple[float, float] = (3.0, 12.0)
    texture_mm: tuple[float, float] = (1.0, 4.0)
    bias_hu: tuple[float, float] = (0.0, 20.0)
    noise_std_hu: tuple[float, float] = (5.0, 25.0)
    inplane_spacing_mm: tuple[float, float] = (0.6, 1.0)
    slice_spacing_mm: tuple[float, float] = (1.0, 5.0)
    slice_thickness_ratio: tuple[float, float] = (1.0, 1.5)
    fov_cut_probability: float = 0.25
    z_margin_mm: tuple[float, float] = (-30.0, 120.0)
    transplant_probability: float = 0.5
    liver_margin_mm: float | None = None
    add_missing_organs: bool = True
    body_layers: bool = True
    thorax_reach_mm: tuple[float, float] | None = None
    heart_detail: bool = False
    heart_iso_probability: float = 0.35
    lesion_types: tuple[float, float, float] = (0.65, 0.2, 0.15)
    extra_lesions: LesionSynthesisConfig | None = LesionSynthesisConfig(n_lesions=(1, 5), radius_mm=(3.0, 20.0))
    extra_lesion_probability: float = 0.5


def _organ_values(phase: str, cfg: SynthCTConfig, rng: np.random.Generator) -> dict[int, float]:
    base = PHASE_HU["unenhanced"]
    table = PHASE_HU[phase]
    gain = rng.uniform(*cfg.enhancement_gain)
    values = {k: base[k] + gain * (table[k] - base[k]) + rng.normal(0.0, cfg.organ_jitter_hu) for k in table}
    values[_O["fat"]] = rng.uniform(-120.0, -80.0)
    values[_O["gallbladder"]] = rng.uniform(0.0, 25.0)
    if rng.random() < cfg.fatty_liver_probability:
        fat_liver = rng.uniform(*cfg.fatty_liver_hu)
        values[_O["liver"]] = fat_liver + gain * (table[_O["liver"]] - base[_O["liver"]])
    return values


def _paint_bone(out: np.ndarray, bone: np.ndarray, sp: np.ndarray, rng: np.random.Generator) -> None:
    """Cortical shell (700-1200 HU) over cancellous bone (150-350 HU)."""
    if not bone.any():
        return
    depth = ndimage.distance_transform_edt(bone, sampling=sp)
    cortex = rng.uniform(700.0, 1200.0)
    marrow = rng.uniform(150.0, 350.0)
    out[bone] = np.where(depth[bone] <= rng.uniform(1.0, 2.5), cortex, marrow)


# myocardium per phase: it enhances about like the liver, while the blood pools follow PHASE_HU's "heart"
_MYOCARDIUM_HU = {"unenhanced": 45.0, "arterial": 110.0, "portal": 105.0, "delayed": 90.0}


def _paint_heart(out: np.ndarray, heart: np.ndarray, phase: str, blood_hu: float, liver_hu: float, sp: np.ndarray,
                 rng: np.random.Generator, iso_probability: float) -> None:
    """The heart as a myocardial wall and septum around two blood pools; sometimes all as grey as the liver."""
    if not heart.any():
        return
    depth = ndimage.distance_transform_edt(heart, sampling=sp)
    idx = np.argwhere(heart)
    pts = (idx - idx.mean(axis=0)) * sp
    # the septum runs from front-left to back-right, about 30-60 degrees off the sagittal plane
    angle = np.deg2rad(rng.uniform(30.0, 60.0))
    normal = np.array([rng.uniform(-0.2, 0.2), -np.sin(angle), np.cos(angle)])
    side = pts @ (normal / np.linalg.norm(normal))
    wall = (depth[heart] <= rng.uniform(4.0, 11.0)) | (np.abs(side) <= rng.uniform(3.0, 6.0))
    if rng.random() < iso_probability:
        myo = blood_l = blood_r = liver_hu + rng.normal(0.0, 10.0)
    else:
        myo = _MYOCARDIUM_HU[phase] + rng.normal(0.0, 12.0)
        blood_l = blood_hu
        blood_r = blood_hu + (rng.uniform(-60.0, 40.0) if phase == "arterial" else rng.normal(0.0, 10.0))
    out[heart] = np.where(wall, myo, np.where(side > 0, blood_l, blood_r)).astype(out.dtype)


def _paint_hollow(out: np.ndarray, organ: np.ndarray, wall_hu: float, sp: np.ndarray, rng: np.random.Generator,
                  air_fraction: float) -> None:
    """Stomach or bowel: an enhancing wall, fluid content and air pockets (in the upper, anterior part)."""
    if not organ.any():
        return
    depth = ndimage.distance_transform_edt(organ, sampling=sp)
    content = rng.uniform(0.0, 35.0)
    field = _smooth_field(rng, organ.shape, sp, 12.0, 1)[0] - 0.02 * np.arange(organ.shape[1])[None, :, None]
    air = organ & (field > np.quantile(field[organ], 1.0 - air_fraction)) & (depth > 2.0)
    out[organ] = np.where(depth[organ] <= rng.uniform(1.5, 4.0), wall_hu, content)
    out[air] = rng.uniform(-1000.0, -850.0)


def paint_ct(organ_map: np.ndarray, spacing_xyz: tuple[float, float, float], rng: np.random.Generator,
             cfg: SynthCTConfig | None = None, phase: str | None = None) -> tuple[np.ndarray, dict]:
    """Paint a complete organ map (canonical order) with CT values; returns ``(hu float32, facts)``.

    ``facts`` records the phase and the liver and lesion values drawn (for galleries and tests).
    """
    cfg = cfg or SynthCTConfig()
    sp = np.asarray(spacing_xyz[::-1], float)
    if phase is None:
        phase = PHASES[int(rng.choice(len(PHASES), p=np.asarray(cfg.phase_weights) / sum(cfg.phase_weights)))]
    values = _organ_values(phase, cfg, rng)
    out = np.full(organ_map.shape, -1000.0, np.float32)
    for value, hu in values.items():
        out[organ_map == value] = hu
    tex_mm = rng.uniform(*cfg.texture_mm)
    texture = _smooth_field(rng, organ_map.shape, sp, max(tex_mm, 2.0 * float(sp.min())), 1)[0]
    body = organ_map > 0
    out[body] += rng.uniform(*cfg.texture_std_hu) * texture[body]
    liver = organ_map == _O["liver"]
    # portal-phase vessels inside the liver: bright branching spots from a high threshold of a fine field
    vessel_field = _smooth_field(rng, organ_map.shape, sp, rng.uniform(4.0, 8.0), 1)[0]
    vessels = liver & (vessel_field > rng.uniform(1.6, 2.4))
    out[vessels] = values[_O["portal_vein"]] + rng.normal(0, 10)
    out[organ_map == _O["lung"]] = rng.uniform(-900.0, -780.0) + 30.0 * texture[organ_map == _O["lung"]]
    _paint_bone(out, organ_map == _O["bone"], sp, rng)
    if cfg.heart_detail:
        _paint_heart(out, organ_map == _O["heart"], phase, values[_O["heart"]], values[_O["liver"]], sp, rng,
                     cfg.heart_iso_probability)
    _paint_hollow(out, organ_map == _O["stomach"], values[_O["stomach"]], sp, rng, rng.uniform(0.0, 0.5))
    _paint_hollow(out, organ_map == _O["bowel"], values[_O["bowel"]], sp, rng, rng.uniform(0.0, 0.15))
    lesion = organ_map == _O["lesion"]
    kind = ("hypo", "hyper", "cyst")[int(rng.choice(3, p=np.asarray(cfg.lesion_types) / sum(cfg.lesion_types)))]
    liver_hu = values[_O["liver"]]
    lesion_hu = {"hypo": liver_hu - rng.uniform(20.0, 70.0), "hyper": liver_hu + rng.uniform(15.0, 50.0),
                 "cyst": rng.uniform(0.0, 20.0)}[kind]
    if lesion.any():
        out[lesion] = lesion_hu + (0.3 if kind == "cyst" else 1.0) * rng.uniform(3.0, 12.0) * texture[lesion]
    bias = _smooth_field(rng, organ_map.shape, sp, 120.0, 1)[0] * rng.uniform(*cfg.bias_hu)
    out[body] += bias[body]
    return out, {"phase": phase, "liver_hu": float(liver_hu), "lesion_kind": kind, "lesion_hu": float(lesion_hu)}


def _scanner(hu: np.ndarray, sp: np.ndarray, thickness_mm: float, rng: np.random.Generator,
             cfg: SynthCTConfig) -> np.ndarray:
    """Partial-volume blur (in-plane PSF, slice profile along z) and noise."""
    sigma = np.array([thickness_mm / 2.355 / sp[0], rng.uniform(0.3, 0.7) / sp[1], rng.uniform(0.3, 0.7) / sp[2]])
    out = ndimage.gaussian_filter(hu, sigma=np.maximum(sigma, 0.0))
    noise = rng.standard_normal(hu.shape).astype(np.float32)
    noise = ndimage.gaussian_filter(noise, sigma=(0, 0.6, 0.6))  # CT noise is correlated in-plane
    noise *= rng.uniform(*cfg.noise_std_hu) / max(float(noise.std()), 1e-6)
    return np.clip(out + noise, -1024.0, 3071.0).astype(np.float32)


def _field_of_view(organ_map: np.ndarray, sp: np.ndarray, rng: np.random.Generator,
                   cfg: SynthCTConfig) -> tuple[slice, slice, slice]:
    """A random scan range around the liver, sometimes cutting one side of the body."""
    liver = (organ_map == _O["liver"]) | (organ_map == _O["lesion"])
    zs = np.nonzero(liver.any(axis=(1, 2)))[0]
    z_lo, z_hi = (zs.min(), zs.max()) if len(zs) else (0, organ_map.shape[0] - 1)
    lo = int(np.clip(z_lo - rng.uniform(*cfg.z_margin_mm) / sp[0], 0, z_lo))
    hi = int(np.clip(z_hi + rng.uniform(*cfg.z_margin_mm) / sp[0], z_hi, organ_map.shape[0] - 1)) + 1
    # a negative margin cuts the liver: keep at least half of it
    mid = (z_lo + z_hi) // 2
    lo, hi = min(lo, mid), max(hi, mid + 1)
    ys = slice(0, organ_map.shape[1])
    xs = slice(0, organ_map.shape[2])
    if rng.random() < cfg.fov_cut_probability:
        body_x = np.nonzero((organ_map > 0).any(axis=(0, 1)))[0]
        if len(body_x):
            cut = int(rng.uniform(0.0, 0.12) * (body_x.max() - body_x.min()))
            # the patient's right (low x, the liver's side) is the side a tight FOV usually clips
            xs = slice(body_x.min() + cut, organ_map.shape[2]) if rng.random() < 0.7 else slice(0, body_x.max() - cut)
    return slice(lo, hi), ys, xs


def _liver_region(organ_map: np.ndarray, sp: np.ndarray, margin_mm: float) -> tuple[slice, ...]:
    """The liver's bounding box plus ``margin_mm`` (the whole map when it holds no liver)."""
    liver = (organ_map == _O["liver"]) | (organ_map == _O["lesion"])
    if not liver.any():
        return tuple(slice(0, n) for n in organ_map.shape)
    out = []
    for axis in range(3):
        present = np.flatnonzero(liver.any(axis=tuple(a for a in range(3) if a != axis)))
        pad = int(np.ceil(margin_mm / sp[axis]))
        out.append(slice(max(0, present[0] - pad), min(organ_map.shape[axis], present[-1] + pad + 1)))
    return tuple(out)


def synthesize_ct(organ_map: np.ndarray, spacing_xyz: tuple[float, float, float], rng: np.random.Generator,
                  cfg: SynthCTConfig | None = None, donors: list[tuple[np.ndarray, tuple]] | None = None,
                  grid_xyz: tuple[float, float, float] | None = None, phase: str | None = None,
                  ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float], dict]:
    """A synthetic CT from a multi-organ label map in canonical order.

    Args:
        organ_map: values of :data:`~LiverSegLib.training.organs.ORGANS`, ``[z, y, x]`` superior/posterior/left.
        spacing_xyz: its voxel size (mm).
        rng: random generator (same state, same output).
        cfg: ranges (default :class:`SynthCTConfig`).
        donors: liver shapes ``(mask, spacing_xyz)`` for :func:`transplant_liver`.
        grid_xyz: paint on this voxel size instead of a random one (e.g. near a coarse stage's grid, to save time).
        phase: force a contrast phase.

    Returns:
        ``(hu, organ_map, spacing_xyz, facts)``: float32 HU and the (completed, cropped) organ map on the new grid.
    """
    cfg = cfg or SynthCTConfig()
    slice_mm = rng.uniform(*cfg.slice_spacing_mm)
    new = grid_xyz or (rng.uniform(*cfg.inplane_spacing_mm),) * 2 + (slice_mm,)
    new = tuple(float(v) for v in new)
    m = resample_labels(organ_map, spacing_xyz, new)
    sp = np.asarray(new[::-1], float)
    facts: dict = {"spacing_xyz": new}
    if donors and rng.random() < cfg.transplant_probability:
        mask, dsp = donors[int(rng.integers(len(donors)))]
        m = transplant_liver(m, new, mask, dsp, rng)
        facts["transplant"] = True
    if cfg.thorax_reach_mm is not None:
        m = add_thorax(m, new, rng, cfg.thorax_reach_mm)
    if cfg.liver_margin_mm is not None:
        m = m[_liver_region(m, sp, cfg.liver_margin_mm)]
    if cfg.add_missing_organs:
        m = add_missing_organs(m, new, rng)
    if cfg.body_layers:
        m = add_body_layers(m, new, rng)
    m = m[_field_of_view(m, sp, rng, cfg)]
    hu, painted = paint_ct(m, new, rng, cfg, phase)
    facts.update(painted)
    hu = _scanner(hu, sp, max(slice_mm, new[2]) * rng.uniform(*cfg.slice_thickness_ratio), rng, cfg)
    if cfg.extra_lesions is not None and rng.random() < cfg.extra_lesion_probability:
        label = np.isin(m, (_O["liver"], _O["lesion"])).astype(np.uint8)
        label[m == _O["lesion"]] = 2
        shift = {"hypo": (-70.0, -15.0), "hyper": (15.0, 50.0), "cyst": (-facts["liver_hu"], 20.0 - facts["liver_hu"])}
        lesion_cfg = LesionSynthesisConfig(**{**cfg.extra_lesions.__dict__, "hu_shift": shift[facts["lesion_kind"]]})
        hu, label = synthesize_lesions(hu, label, new, lesion_cfg, rng)
        m = m.copy()
        m[label == 2] = _O["lesion"]
    return hu.astype(np.float32), m.astype(np.uint8), new, facts
