"""LiverSegSlicer: the Qt-free glue between 3D Slicer's MRML scene and LiverSegLib.

Imports only MRML/VTK (``slicer`` from Slicer or from the ``slicer-core`` wheel) and LiverSegLib, never ``qt``,
``ctk`` or ``slicer.app`` at import time, so it runs inside Slicer and headless (tests, batch).

Example (Slicer's Python console)::

    import LiverSeg
    logic = LiverSeg.LiverSegLogic()                       # slicer.mrmlScene, subprocess runner
    seg = logic.process(getNode("CT"), device="cpu")  # "Liver" + "Liver lesion" segments
    table = logic.computeStatistics(seg, getNode("CT"))
    logic.exportSurfaces(seg, "/tmp/surfaces")             # Liver_LPS.stl, Liver_lesion_LPS.stl

The runners and the run options are LiverSegLib's (:mod:`LiverSegLib.runs`), re-exported here for the console.

Coordinate systems: LiverSegLib works in LPS (ITK/DICOM); nodes, segment geometry and the statistics table's
centroids are RAS (Slicer); surface files are LPS by default, as Slicer's own export, and say so in their names.
"""

from __future__ import annotations

from LiverSegLib.runs.options import SegmentOptions
from LiverSegLib.runs.runners import InProcessRunner, RunnerError
from LiverSegLib.runs.subprocess_runner import SubprocessRunner

from .batch import CaseResult, findCases, processFolder
from .dependencies import ensureDependencies
from .logic import LiverSegLogic
from .segmentation_writer import terminologyTag
from .statistics import computeStatistics, segmentArray
from .surfaces import exportSurfaces
from .volumes import volumeFromNode

__all__ = [
    "LiverSegLogic", "SegmentOptions", "RunnerError", "InProcessRunner", "SubprocessRunner", "exportSurfaces",
    "computeStatistics", "segmentArray", "processFolder", "findCases", "CaseResult", "volumeFromNode",
    "terminologyTag", "ensureDependencies",
]
