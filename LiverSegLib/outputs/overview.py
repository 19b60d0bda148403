"""A one-picture overview (PNG) of a segmentation: axial and coronal CT slices with liver and lesion outlines."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from LiverSegLib.types import LESION_LABEL, Volume

__all__ = ["render_overview", "radiological_view"]

HU_WINDOW = (-160.0, 240.0)  # abdominal soft-tissue window: liver ~60 HU sits mid-grey
_LIVER_COLOUR, _LESION_COLOUR = "#2ecc40", "#ff2d2d"


def radiological_view(volume: Volume) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A view of ``volume.array_zyx`` re-indexed so that axis 0 runs inferior->superior, axis 1 anterior->posterior
    and axis 2 patient right->left, with the matching voxel spacing (S, P, L order).

    Each image axis is assigned to the LPS axis it is most aligned with (oblique scans are shown on their nearest
    anatomical planes). Only transposes and flips are used, so no voxel data is copied. With this order an axial
    slice ``view[k]`` shown with row 0 at the top has anterior up and the patient's right on the image's left
    (radiological convention), whatever the storage order (e.g. a NIfTI stored RAS and a DICOM stored LPS).
    """
    direction = np.asarray(volume.direction)
    lps_axis_of = [int(np.argmax(np.abs(direction[:, c]))) for c in range(3)]  # for image axes i, j, k
    if sorted(lps_axis_of) != [0, 1, 2]:  # degenerate (~45 degrees): keep storage order rather than guess
        lps_axis_of = [0, 1, 2]
    # array axis of image axis c is 2 - c ([k, j, i] storage); wanted array order: S, P, L = LPS axes 2, 1, 0
    image_axis_for = {lps: c for c, lps in enumerate(lps_axis_of)}
    order = [2 - image_axis_for[lps] for lps in (2, 1, 0)]
    view = np.transpose(volume.array_zyx, order)
    for out_axis, lps in enumerate((2, 1, 0)):
        c = image_axis_for[lps]
        if direction[lps, c] < 0:  # the image axis runs against L, P or S: flip it
            view = np.flip(view, axis=out_axis)
    spacing = tuple(float(volume.spacing_xyz[image_axis_for[lps]]) for lps in (2, 1, 0))
    return view, spacing  # type: ignore[return-value]


def _slice_positions(liver_s: np.ndarray, n: int) -> list[int]:
    """Axial slice indices at 25/50/75 % of the liver's S extent (of the whole volume when there is no liver)."""
    zs = np.flatnonzero(liver_s.any(axis=(1, 2)))
    lo, hi = (int(zs[0]), int(zs[-1])) if zs.size else (0, n - 1)
    return sorted({int(round(lo + f * (hi - lo))) for f in (0.25, 0.5, 0.75)})


def _outline(ax, mask: np.ndarray, colour: str) -> None:
    # contour needs a 2x2 grid and a level crossing; a 1-slice coronal view or an empty mask has neither
    if min(mask.shape) >= 2 and mask.any() and not mask.all():
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.0)


def _panel(ax, ct: np.ndarray, labels: np.ndarray, pixel_aspect: float, caption: str) -> None:
    ax.imshow(ct, cmap="gray", vmin=HU_WINDOW[0], vmax=HU_WINDOW[1], aspect=pixel_aspect, interpolation="nearest")
    _outline(ax, labels > 0, _LIVER_COLOUR)  # liver outline includes its lesions: the organ's border
    _outline(ax, labels == LESION_LABEL, _LESION_COLOUR)
    ax.set_title(caption, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def render_overview(ct: Volume, labelmap: Volume, path: str | os.PathLike, title: str = "", *,
                    liver_volume_ml: float | None = None, lesion_count: int | None = None) -> Path:
    """Render a PNG with three axial slices and one or two coronal slices, liver in green and lesions in red.

    Slices are shown radiologically (patient right on the image's left, anterior / superior up) with the pixel
    aspect ratio given by the voxel spacing, CT windowed to [-160, 240] HU. Uses matplotlib's object API with
    the Agg canvas, so no pyplot state or GUI backend is touched.

    Args:
        ct: the CT volume.
        labelmap: labelmap on the CT's grid (0 background, 1 liver, 2 lesion); may be empty.
        path: PNG file to write.
        title: figure title (e.g. the case name).
        liver_volume_ml: shown in the legend when given.
        lesion_count: shown in the legend when given.

    Returns:
        The path written.
    """
    if ct.array_zyx.shape != labelmap.array_zyx.shape:
        raise ValueError(f"labelmap shape {labelmap.array_zyx.shape} differs from the CT's {ct.array_zyx.shape}")
    ct_v, (s_s, s_p, s_l) = radiological_view(ct)
    lab_v, _ = radiological_view(ct.with_array(labelmap.array_zyx))  # the CT's geometry: identical re-indexing
    liver = lab_v > 0
    axial = _slice_positions(liver, ct_v.shape[0])
    # coronal through the liver's centre, and through the largest-lesion region's centre when there are lesions
    ps = [np.flatnonzero(m.any(axis=(0, 2))) for m in (liver, lab_v == LESION_LABEL)]
    coronal = [int(np.median(ps[0])) if ps[0].size else ct_v.shape[1] // 2]
    if ps[1].size and int(np.median(ps[1])) != coronal[0]:
        coronal.append(int(np.median(ps[1])))

    n = len(axial) + len(coronal)
    fig = Figure(figsize=(3.2 * n, 3.9), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, z in zip(axes[: len(axial)], axial, strict=True):
        _panel(ax, ct_v[z], lab_v[z], s_p / s_l, f"axial {z + 1}/{ct_v.shape[0]}")
    for ax, p in zip(axes[len(axial) :], coronal, strict=True):
        # rows of a coronal slice run inferior->superior: flip so superior is up
        _panel(ax, ct_v[::-1, p, :], lab_v[::-1, p, :], s_s / s_l, f"coronal {p + 1}/{ct_v.shape[1]}")
    axes[0].text(0.02, 0.5, "R", color="yellow", transform=axes[0].transAxes, fontsize=10, va="center")
    axes[0].text(0.98, 0.5, "L", color="yellow", transform=axes[0].transAxes, fontsize=10, va="center", ha="right")

    facts = []
    if liver_volume_ml is not None:
        facts.append(f"liver {liver_volume_ml:.0f} ml")
    if lesion_count is not None:
        facts.append(f"{lesion_count} lesion{'s' if lesion_count != 1 else ''}")
    handles = [Line2D([], [], color=_LIVER_COLOUR, label="Liver"), Line2D([], [], color=_LESION_COLOUR, label="Lesion")]
    if facts:
        handles.append(Line2D([], [], linestyle="none", label=", ".join(facts)))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    out = Path(path)
    fig.savefig(out, format="png")
    return out
