"""Closed surface meshes (STL/OBJ) of a labelmap's labels, in LPS patient coordinates, for surgical planning."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from vtkmodules.util import numpy_support
from vtkmodules.vtkCommonDataModel import vtkImageData, vtkPolyData
from vtkmodules.vtkCommonMath import vtkMatrix4x4
from vtkmodules.vtkCommonTransforms import vtkTransform
from vtkmodules.vtkFiltersCore import vtkPolyDataNormals, vtkWindowedSincPolyDataFilter
from vtkmodules.vtkFiltersGeneral import vtkDiscreteFlyingEdges3D, vtkTransformPolyDataFilter
from vtkmodules.vtkIOGeometry import vtkOBJWriter, vtkSTLWriter

from LiverSegLib.config import SURFACE_FORMATS
from LiverSegLib.errors import InputError
from LiverSegLib.types import LESION_LABEL, LIVER_LABEL, LabelInfo, Volume

__all__ = ["export_surfaces", "labelmap_surface", "outward_normals", "write_surface", "SURFACE_FORMATS"]



def _mask_image(mask_zyx: np.ndarray) -> vtkImageData | None:
    """vtkImageData in index units of the mask's bounding box, padded by one background voxel on every side.

    The padding is what makes the extracted surface closed where the label touches the volume's edge; the crop
    keeps surface extraction proportional to the label's size rather than the CT's.
    """
    nonzero = [np.flatnonzero(mask_zyx.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))]
    if any(idx.size == 0 for idx in nonzero):
        return None
    (k0, k1), (j0, j1), (i0, i1) = ((int(idx[0]), int(idx[-1])) for idx in nonzero)
    padded = np.pad(mask_zyx[k0 : k1 + 1, j0 : j1 + 1, i0 : i1 + 1].astype(np.uint8), 1)
    image = vtkImageData()
    image.SetDimensions(padded.shape[2], padded.shape[1], padded.shape[0])  # VTK wants (i, j, k)
    image.SetOrigin(i0 - 1.0, j0 - 1.0, k0 - 1.0)  # index of the padded corner in the full grid
    image.SetSpacing(1.0, 1.0, 1.0)
    # a C-ordered [k, j, i] array runs i fastest, which is VTK's point order
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(padded.ravel(), deep=True))
    return image


def labelmap_surface(labelmap: Volume, values: Iterable[int], smoothing_iterations: int = 15) -> vtkPolyData:
    """Closed triangle surface enclosing the voxels whose value is in ``values``, in LPS mm.

    Args:
        labelmap: integer volume.
        values: label values that together form the solid.
        smoothing_iterations: windowed-sinc smoothing passes (0 disables); this filter only moves points, so the
            mesh stays closed, and its pass band keeps the volume within a few percent of the voxel count.

    Returns:
        vtkPolyData with outward point normals (empty when no voxel has one of ``values``).
    """
    image = _mask_image(np.isin(labelmap.array_zyx, list(values)))
    if image is None:
        return vtkPolyData()
    extractor = vtkDiscreteFlyingEdges3D()
    extractor.SetInputData(image)
    extractor.SetValue(0, 1)
    extractor.ComputeNormalsOff()
    extractor.ComputeGradientsOff()
    extractor.ComputeScalarsOff()

    # index -> LPS with the volume's full matrix (direction @ diag(spacing), origin), before smoothing so that
    # smoothing acts in mm and treats anisotropic voxels fairly
    matrix = vtkMatrix4x4()
    for r, row in enumerate(labelmap.index_to_physical_matrix()):
        for c, value in enumerate(row):
            matrix.SetElement(r, c, float(value))
    transform = vtkTransform()
    transform.SetMatrix(matrix)
    to_lps = vtkTransformPolyDataFilter()
    to_lps.SetInputConnection(extractor.GetOutputPort())
    to_lps.SetTransform(transform)
    last = to_lps

    if smoothing_iterations > 0:
        smoother = vtkWindowedSincPolyDataFilter()
        smoother.SetInputConnection(last.GetOutputPort())
        smoother.SetNumberOfIterations(smoothing_iterations)
        smoother.SetPassBand(0.1)
        smoother.NormalizeCoordinatesOn()
        smoother.BoundarySmoothingOff()
        smoother.FeatureEdgeSmoothingOff()
        smoother.NonManifoldSmoothingOn()
        last = smoother

    last.Update()
    return outward_normals(last.GetOutput())


def outward_normals(mesh: vtkPolyData) -> vtkPolyData:
    """``mesh`` with consistently ordered, outward-facing triangles and normals.

    A mirroring transform (determinant < 0, e.g. RAS <-> LPS or a flipped direction) reverses the triangle winding;
    STL readers take facet orientation from the winding. Points are never split at sharp edges, which would open
    the mesh.
    """
    normals = vtkPolyDataNormals()
    normals.SetInputData(mesh)
    normals.SplittingOff()
    normals.ConsistencyOn()
    normals.AutoOrientNormalsOn()
    normals.Update()
    return normals.GetOutput()


def _file_name(label: LabelInfo, file_format: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9]+", "_", label.name).strip("_") or f"label_{label.value}"
    return f"{stem}_LPS.{file_format}"  # the coordinate system is in the name: Slicer and CAD tools assume RAS


def write_surface(surface: vtkPolyData, path: str | os.PathLike, file_format: str) -> Path:
    """Write ``surface`` to ``path`` as it is (no re-orientation), atomically.

    The mesh goes to a temporary name beside ``path`` first and is renamed, so a reader never sees half a mesh;
    an existing file at ``path`` is replaced.

    Args:
        surface: the mesh, in whatever coordinates the caller wants in the file.
        path: the file to write; its folder must exist.
        file_format: "stl" (binary) or "obj", case-insensitive (the Slicer side passes "STL"/"OBJ").

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        InputError: unsupported format or a failed write.
    """
    path = Path(path)
    fmt = file_format.lower().lstrip(".")
    if fmt not in SURFACE_FORMATS:
        raise InputError(f"unsupported surface format: {file_format!r} (use one of {', '.join(SURFACE_FORMATS)})")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if fmt == "stl":
        writer = vtkSTLWriter()
        writer.SetFileTypeToBinary()
    else:
        writer = vtkOBJWriter()
    writer.SetInputData(surface)
    writer.SetFileName(str(tmp))
    try:
        writer.Write()
        if writer.GetErrorCode() != 0 or not tmp.is_file():
            raise InputError(f"cannot write surface {path} (check the folder is writable and has space)")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def export_surfaces(labelmap: Volume, folder: str | os.PathLike, labels: list[LabelInfo],
                    file_format: str = "stl") -> list[Path]:
    """Write one closed surface per label present in ``labelmap``, in LPS mm.

    The liver surface encloses the liver's lesions too (the whole organ, as ``liver_volume_ml`` counts it), so
    that it is one closed organ shell rather than parenchyma with lesion-shaped cavities.

    Args:
        labelmap: uint8 labelmap on the CT grid.
        folder: output folder (created if needed).
        labels: label table; labels absent from the labelmap are skipped.
        file_format: "stl" (binary) or "obj".

    Returns:
        Paths written, e.g. ``folder/Liver_LPS.stl`` and ``folder/Liver_lesion_LPS.stl``.

    Raises:
        InputError: unsupported format or a failed write.
    """
    fmt = file_format.lower().lstrip(".")
    if fmt not in SURFACE_FORMATS:
        raise InputError(f"unsupported surface format: {file_format!r} (use one of {', '.join(SURFACE_FORMATS)})")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for label in labels:
        if not np.any(labelmap.array_zyx == label.value):
            continue
        values = {label.value, LESION_LABEL} if label.value == LIVER_LABEL else {label.value}
        path = out / _file_name(label, fmt)
        written.append(write_surface(labelmap_surface(labelmap, values), path, fmt))
    return written
