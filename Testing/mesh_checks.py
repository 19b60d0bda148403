"""Checks of surface meshes shared by the tests: closedness, enclosed volume, facet orientation and bounds.

Imports only VTK (``vtkmodules``) and numpy, so the library tests use it without slicer-core; inside the Slicer tests
the meshes come from the same VTK build (slicer-core's ``vtk`` is this ``vtkmodules``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from vtkmodules.util.numpy_support import vtk_to_numpy
from vtkmodules.vtkCommonDataModel import vtkPolyData
from vtkmodules.vtkFiltersCore import vtkFeatureEdges, vtkMassProperties, vtkTriangleFilter
from vtkmodules.vtkIOGeometry import vtkOBJReader, vtkSTLReader

__all__ = ["mesh_stats", "physical_bounds_lps", "read_mesh"]


def read_mesh(path: str | os.PathLike) -> vtkPolyData:
    """The mesh of an STL or OBJ file (by suffix, case-insensitive)."""
    path = Path(path)
    reader = vtkSTLReader() if path.suffix.lower() == ".stl" else vtkOBJReader()
    reader.SetFileName(str(path))
    reader.Update()
    return reader.GetOutput()


def _edge_count(mesh: vtkPolyData, boundary: bool) -> int:
    """Number of boundary edges (``boundary``) or else non-manifold edges of ``mesh``."""
    edges = vtkFeatureEdges()
    edges.SetInputData(mesh)
    edges.FeatureEdgesOff()
    edges.ManifoldEdgesOff()
    edges.SetBoundaryEdges(boundary)
    edges.SetNonManifoldEdges(not boundary)
    edges.Update()
    return edges.GetOutput().GetNumberOfCells()


def mesh_stats(mesh: vtkPolyData | str | os.PathLike) -> dict:
    """Facts about a mesh (a vtkPolyData, or an STL/OBJ file) that the tests check.

    Returns:
        ``cells`` (number of cells), ``boundary`` and ``non_manifold`` (edge counts: both 0 for a closed, manifold
        surface), ``volume`` (enclosed volume, mm^3), ``signed_volume`` (> 0 when the facets face outward) and
        ``bounds`` (xmin, xmax, ymin, ymax, zmin, zmax as a numpy array).
    """
    if not isinstance(mesh, vtkPolyData):
        mesh = read_mesh(mesh)
    triangles = vtkTriangleFilter()
    triangles.SetInputData(mesh)
    triangles.Update()
    tri = triangles.GetOutput()
    volume = signed = 0.0
    if tri.GetNumberOfCells() > 0:
        mass = vtkMassProperties()
        mass.SetInputData(tri)
        mass.Update()
        volume = mass.GetVolume()
        points = vtk_to_numpy(tri.GetPoints().GetData()).astype(np.float64)
        cells = vtk_to_numpy(tri.GetPolys().GetConnectivityArray()).reshape(-1, 3)
        a, b, c = (points[cells[:, n]] for n in range(3))
        signed = float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)
    return {"cells": mesh.GetNumberOfCells(), "boundary": _edge_count(mesh, True),
            "non_manifold": _edge_count(mesh, False), "volume": volume, "signed_volume": signed,
            "bounds": np.array(mesh.GetBounds())}


def physical_bounds_lps(volume, mask_zyx: np.ndarray) -> np.ndarray:
    """LPS bounds (xmin, xmax, ymin, ymax, zmin, zmax) of the voxel corners of ``mask`` on ``volume``'s grid (a
    LiverSegLib ``Volume``): where a surface of the mask must lie, to within the smoothing."""
    kji = np.argwhere(mask_zyx)
    corners = np.array([[a, b, c] for a in (-0.5, 0.5) for b in (-0.5, 0.5) for c in (-0.5, 0.5)])
    ijk = (kji[:, None, ::-1] + corners[None]).reshape(-1, 3)  # voxel corners, so bounds include the full voxel
    lps = np.asarray(volume.index_to_physical(ijk))
    return np.stack([lps.min(axis=0), lps.max(axis=0)], axis=1).ravel()
