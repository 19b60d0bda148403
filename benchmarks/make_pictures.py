"""Make the LiverSeg module icon and the README screenshot.

    .venv/bin/python benchmarks/make_pictures.py icon
    .venv/bin/python benchmarks/make_pictures.py screenshot SEGMENT_OUTDIR [--ct CT] [-o Resources/Screenshots/...]

``icon`` draws ``LiverSeg/Resources/Icons/LiverSeg.png`` (128x128, transparent): a stylised liver seen from the
front (the large right lobe on the picture's left, as in an anterior view) in liver colour with a darker lesion.

``screenshot`` renders the liver and lesion surfaces that ``liverseg segment CT -o OUTDIR --surfaces stl`` wrote
into OUTDIR (LPS millimetres) in an off-screen VTK window, from the front, and puts the run's ``overview.png``
beside it. If VTK cannot open an off-screen context (no EGL/OSMesa), the 3D panel is drawn with matplotlib's
``plot_trisurf`` instead. Not part of the library or the tests; needs matplotlib and vtk.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Circle, PathPatch  # noqa: E402
from matplotlib.path import Path as MplPath  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ICON = ROOT / "LiverSeg" / "Resources" / "Icons" / "LiverSeg.png"
SCREENSHOT = ROOT / "Resources" / "Screenshots" / "LiverSeg-3D.png"
LIVER_RGB = (0.867, 0.510, 0.396)  # Slicer's liver colour (GenericAnatomyColors)
LESION_RGB = (0.50, 0.20, 0.16)


def _darker(rgb: tuple[float, float, float], f: float) -> tuple[float, float, float]:
    return tuple(c * f for c in rgb)  # type: ignore[return-value]


def _liver_path() -> MplPath:
    """Outline of a liver, anterior view, in a unit square (y up): dome on top, right lobe left, left lobe tip right."""
    move, curve, close = MplPath.MOVETO, MplPath.CURVE4, MplPath.CLOSEPOLY
    vertices = [
        (0.20, 0.16),  # inferior tip of the right lobe
        (0.07, 0.30), (0.02, 0.60), (0.12, 0.76),  # right lateral border up to the dome
        (0.25, 0.92), (0.50, 0.90), (0.68, 0.84),  # diaphragmatic dome
        (0.82, 0.79), (0.94, 0.74), (0.98, 0.66),  # over the left lobe to its tip
        (0.86, 0.60), (0.70, 0.56), (0.58, 0.50),  # inferior border of the left lobe
        (0.52, 0.47), (0.50, 0.43), (0.46, 0.40),  # umbilical notch
        (0.38, 0.32), (0.30, 0.20), (0.20, 0.16),  # inferior border of the right lobe
        (0.20, 0.16),
    ]
    codes = [move] + [curve] * 18 + [close]
    return MplPath(vertices, codes)


def make_icon(out: Path = ICON, size: int = 128) -> Path:
    """Draw the 128x128 module icon (transparent background) and return its path."""
    fig = plt.figure(figsize=(1, 1), dpi=size)
    fig.patch.set_alpha(0.0)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    # the silhouette: liver colour with a darker rim, so it stays readable on light and dark module lists
    ax.add_patch(PathPatch(_liver_path(), facecolor=LIVER_RGB, edgecolor=_darker(LIVER_RGB, 0.55), lw=2.2,
                           joinstyle="round"))
    # a soft highlight on the dome gives some volume without clutter
    highlight = MplPath([(0.16, 0.70), (0.26, 0.84), (0.46, 0.85), (0.62, 0.80)],
                        [MplPath.MOVETO, MplPath.CURVE4, MplPath.CURVE4, MplPath.CURVE4])
    ax.add_patch(PathPatch(highlight, facecolor="none", edgecolor=(1, 1, 1, 0.45), lw=2.0, capstyle="round"))
    # one lesion, large enough to be seen at 16 px, with a lighter rim like an enhancing margin
    ax.add_patch(Circle((0.33, 0.50), 0.115, facecolor=LESION_RGB, edgecolor=_darker(LIVER_RGB, 0.80), lw=1.4))
    ax.add_patch(Circle((0.60, 0.66), 0.05, facecolor=LESION_RGB, edgecolor=_darker(LIVER_RGB, 0.80), lw=1.0))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=size, transparent=True)
    plt.close(fig)
    return out


def _read_stl(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkIOGeometry import vtkSTLReader

    reader = vtkSTLReader()
    reader.SetFileName(str(path))
    reader.Update()
    poly = reader.GetOutput()
    points = vtk_to_numpy(poly.GetPoints().GetData()).astype(np.float64)
    cells = vtk_to_numpy(poly.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    return points, cells


def _render_vtk(surfaces: list[tuple[Path, tuple[float, float, float], float]], size: tuple[int, int]) -> np.ndarray:
    """Off-screen VTK rendering of the surfaces seen from the front (anterior), patient's right on the left."""
    import vtkmodules.vtkRenderingOpenGL2  # noqa: F401  (registers the OpenGL backend)
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkFiltersCore import vtkPolyDataNormals
    from vtkmodules.vtkIOGeometry import vtkSTLReader
    from vtkmodules.vtkRenderingCore import (
        vtkActor,
        vtkLightKit,
        vtkPolyDataMapper,
        vtkRenderer,
        vtkRenderWindow,
        vtkWindowToImageFilter,
    )

    renderer = vtkRenderer()
    renderer.SetBackground(1.0, 1.0, 1.0)
    vtkLightKit().AddLightsToRenderer(renderer)  # key, fill and back lights: no black faces
    window = vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(*size)
    window.SetMultiSamples(8)
    window.AddRenderer(renderer)
    for path, rgb, opacity in surfaces:
        reader = vtkSTLReader()
        reader.SetFileName(str(path))
        normals = vtkPolyDataNormals()
        normals.SetInputConnection(reader.GetOutputPort())
        normals.SetFeatureAngle(60.0)
        mapper = vtkPolyDataMapper()
        mapper.SetInputConnection(normals.GetOutputPort())
        actor = vtkActor()
        actor.SetMapper(mapper)
        prop = actor.GetProperty()
        prop.SetColor(*rgb)
        prop.SetOpacity(opacity)
        prop.SetSpecular(0.25)
        prop.SetSpecularPower(20)
        renderer.AddActor(actor)
    # no depth peeling: it drops translucent surfaces with some off-screen (OSMesa/EGL) contexts; with one
    # translucent shell around opaque lesions, plain alpha blending (opaque geometry drawn first) is exact enough
    # LPS: anterior is -y; look from the front (camera at -y) with superior (+z) up. Patient's right (-x) then
    # appears on the picture's left, as in an anterior view / Slicer's "A" 3D view.
    camera = renderer.GetActiveCamera()
    renderer.ResetCamera()
    focal = np.array(camera.GetFocalPoint())
    distance = camera.GetDistance()
    camera.SetPosition(*(focal + np.array([0.35, -1.0, 0.25]) / np.linalg.norm([0.35, -1.0, 0.25]) * distance))
    camera.SetViewUp(0, 0, 1)
    renderer.ResetCamera()
    camera.Zoom(1.25)
    window.Render()
    grab = vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.ReadFrontBufferOff()
    grab.Update()
    image = grab.GetOutput()
    width, height, _ = image.GetDimensions()
    rgb = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[::-1, :, :3]
    window.Finalize()
    return rgb


def _render_matplotlib(ax, surfaces: list[tuple[Path, tuple[float, float, float], float]]) -> None:
    """Fallback 3D panel: matplotlib trisurf of the same meshes (decimated by taking every n-th triangle)."""
    for path, rgb, opacity in surfaces:
        points, cells = _read_stl(path)
        step = max(1, len(cells) // 20000)
        ax.plot_trisurf(points[:, 0], points[:, 1], points[:, 2], triangles=cells[::step], color=rgb,
                        alpha=opacity, linewidth=0, shade=True)
    ax.view_init(elev=15, azim=-70)
    ax.set_box_aspect(np.ptp(np.vstack([_read_stl(p)[0] for p, _, _ in surfaces]), axis=0))
    ax.set_axis_off()


def _trim(image: np.ndarray, margin: int = 12) -> np.ndarray:
    """Crop the white border of an RGB(A) image, keeping ``margin`` pixels."""
    rgb = image[..., :3].astype(np.float32)
    rgb = rgb / 255.0 if rgb.max() > 1.0 else rgb
    content = np.argwhere(rgb.min(axis=-1) < 0.97)
    if content.size == 0:
        return image
    (r0, c0), (r1, c1) = content.min(axis=0), content.max(axis=0)
    return image[max(r0 - margin, 0) : r1 + margin + 1, max(c0 - margin, 0) : c1 + margin + 1]


def make_screenshot(outdir: Path, out: Path = SCREENSHOT) -> Path:
    """Compose the 3D surface rendering and the run's overview.png into one README picture."""
    import json

    stl = sorted(outdir.rglob("*.stl"))  # liverseg writes them to OUTDIR/surfaces
    liver = [p for p in stl if "liver" in p.name.lower() and "lesion" not in p.name.lower()]
    lesion = [p for p in stl if "lesion" in p.name.lower()]
    if not liver:
        raise SystemExit(f"no liver STL in {outdir} (run 'liverseg segment CT -o {outdir} --surfaces stl' first)")
    surfaces = [(liver[0], LIVER_RGB, 0.45 if lesion else 1.0)] + [(p, (0.85, 0.15, 0.12), 1.0) for p in lesion]
    summary = json.loads((outdir / "summary.json").read_text()) if (outdir / "summary.json").is_file() else {}
    overview = _trim(plt.imread(outdir / "overview.png")) if (outdir / "overview.png").is_file() else None
    try:
        render, how = _trim(_render_vtk(surfaces, (900, 900))), "VTK"
    except Exception as exc:  # no off-screen OpenGL context here: fall back to matplotlib
        print(f"VTK off-screen rendering failed ({exc}); using matplotlib", file=sys.stderr)
        render, how = None, "matplotlib"
    # top row: the 3D view and what the run reported; bottom row: the slices (both rows as wide as the figure)
    render_share, width = 0.58, 11.0
    top = width * render_share * (render.shape[0] / render.shape[1] if render is not None else 0.7)
    bottom = width * overview.shape[0] / overview.shape[1] if overview is not None else 0.0
    fig = plt.figure(figsize=(width, top + bottom + 0.3), dpi=130, facecolor="white")
    grid = fig.add_gridspec(2 if overview is not None else 1, 2, height_ratios=[top, bottom] if bottom else [top],
                            width_ratios=[render_share, 1 - render_share], left=0.01, right=0.99, bottom=0.01,
                            top=0.99, hspace=0.04, wspace=0.02)
    if render is not None:
        ax = fig.add_subplot(grid[0, 0])
        ax.imshow(render)
        ax.set_axis_off()
    else:
        ax = fig.add_subplot(grid[0, 0], projection="3d")
        _render_matplotlib(ax, surfaces)
    model, timings = summary.get("model", {}), summary.get("timings_s", {})
    lines = [
        ("liverseg segment CT -o OUT --surfaces stl", "bold"),
        (f"model {model.get('id', '?')} {model.get('version', '')} (demo weights, not for clinical use)", None),
        (f"liver {summary.get('liver_volume_ml', 0):.0f} mL (lesions included)", None),
        (f"{summary.get('lesion_count', len(lesion))} lesion(s), {summary.get('lesion_volume_ml', 0):.1f} mL", None),
        (f"{sum(timings.values()):.0f} s on {summary.get('details', {}).get('device', 'cpu').upper()} "
         f"({os.cpu_count()} cores)", None),
        ("", None),
        ("3D: closed STL surfaces in LPS mm, seen from the front", None),
        ("(patient's right on the left); liver "
         + ("translucent, lesions red" if lesion else "(no lesion kept at 0.80)"), None),
        ("a flat face is where the scan's field of view ends", None),
        ("below: overview.png with the liver (green) and", None),
        ("lesion (red) outlines on axial and coronal slices", None),
    ]
    text = fig.add_subplot(grid[0, 1])
    text.set_axis_off()
    for i, (line, weight) in enumerate(lines):
        text.text(0.0, 0.95 - i * 0.08, line, fontsize=10, fontweight=weight or "normal", transform=text.transAxes,
                  va="top")
    if overview is not None:
        ax2 = fig.add_subplot(grid[1, :])
        ax2.imshow(overview)
        ax2.set_axis_off()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, facecolor="white")
    plt.close(fig)
    print(f"wrote {out} (3D panel drawn with {how})")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    icon = sub.add_parser("icon", help="draw the module icon")
    icon.add_argument("-o", "--out", type=Path, default=ICON)
    shot = sub.add_parser("screenshot", help="render the surfaces of a 'liverseg segment' output folder")
    shot.add_argument("outdir", type=Path)
    shot.add_argument("-o", "--out", type=Path, default=SCREENSHOT)
    args = parser.parse_args(argv)
    if args.what == "icon":
        print(f"wrote {make_icon(args.out)}")
    else:
        make_screenshot(args.outdir, args.out)


if __name__ == "__main__":
    main()
