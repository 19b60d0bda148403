"""LiverSegLogic: CT volume node in, "Liver" / "Liver lesion" segmentation node out. Never opens a dialog.

Scene contract: a run that fails or is cancelled leaves the scene exactly as it was. The new segmentation node is
built completely outside the scene and added only at the end (and removed again if a finishing step fails); an
existing segmentation is changed only when it was passed as ``outputSegmentation``, and then only after success.
"""

from __future__ import annotations

import numpy as np
import slicer

from LiverSegLib.errors import InputError
from LiverSegLib.runs.options import SegmentOptions
from LiverSegLib.runs.runners import ProgressCallback
from LiverSegLib.types import SegmentationResult, Volume

from .segmentation_writer import (
    ATTRIBUTE_PREFIX,
    BINARY_LABELMAP,
    buildSegmentation,
    ensureConverterRules,
    placeInSubjectHierarchy,
    resultAttributes,
)
from .volumes import volumeFromNode

__all__ = ["LiverSegLogic"]

try:  # inside Slicer: a proper scripted-module logic (parameter nodes, Slicer's conventions)
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic as _LogicBase
except ImportError:  # headless slicer-core has MRML but not the scripted-module framework
    _LogicBase = object


def _report(progress: ProgressCallback | None, stage: str, fraction: float) -> None:
    if progress is not None:
        progress(stage, fraction)


class LiverSegLogic(_LogicBase):
    """Segments the liver and liver lesions of a CT volume node into a segmentation node.

    Args:
        scene: the MRML scene (default: ``slicer.mrmlScene`` inside Slicer; required elsewhere).
        runner: what runs the model (default: a :class:`~LiverSegLib.runs.subprocess_runner.SubprocessRunner`); any
            object with ``run(volume, options, progress=None)``; ``start``/``poll``/``cancel`` for non-blocking use.

    Attributes:
        lastResult: the :class:`LiverSegLib.SegmentationResult` of the last successful run (lesion table, volumes,
            warnings, timings), ``None`` before.
    """

    def __init__(self, scene=None, runner=None) -> None:
        if _LogicBase is not object:
            _LogicBase.__init__(self)
        if scene is None:
            scene = getattr(slicer, "mrmlScene", None)
            if scene is None:
                raise ValueError("no MRML scene: outside Slicer pass one, e.g. LiverSegLogic(slicer.vtkMRMLScene())")
        if runner is None:
            from LiverSegLib.runs.subprocess_runner import SubprocessRunner

            runner = SubprocessRunner()
        self.scene = scene
        self.runner = runner
        self.lastResult: SegmentationResult | None = None
        self._pending: tuple | None = None

    # ---------------------------------------------------------------- running
    _thresholds: dict[str | None, float] = {}  # per model id: the GUI asks on every parameter change

    @classmethod
    def modelLesionThreshold(cls, model: str | None = None) -> float | None:
        """The lesion threshold a catalogue model uses unless told otherwise (``None``: catalogue unreadable)."""
        if model not in cls._thresholds:
            try:
                from LiverSegLib.registry import load_registry

                cls._thresholds[model] = float(load_registry().get(model).cascade.lesion_threshold)
            except Exception:  # noqa: BLE001 - e.g. jsonschema not installed yet: asked again next time
                return None
        return cls._thresholds[model]

    @staticmethod
    def options(model: str | None = None, modelFile: str | None = None, device: str = "auto",
                lesionThreshold: float | None = None, quick: bool = False) -> SegmentOptions:
        """The library's run options for Slicer's keyword arguments (validated: bad values raise InputError)."""
        return SegmentOptions(model=model, model_file=modelFile, device=device, lesion_threshold=lesionThreshold,
                              quick=quick)

    def _prepare(self, inputVolume, outputSegmentation) -> Volume:
        volume = volumeFromNode(inputVolume)
        if inputVolume.GetScene() is not self.scene:
            raise InputError(f"volume '{inputVolume.GetName()}' is not in this logic's scene")
        if outputSegmentation is not None:
            if not outputSegmentation.IsA("vtkMRMLSegmentationNode"):
                raise InputError(f"'{outputSegmentation.GetName()}' is not a segmentation node")
            if outputSegmentation.GetScene() is not self.scene:
                raise InputError(f"segmentation '{outputSegmentation.GetName()}' is not in this logic's scene")
        return volume

    def process(self, inputVolume, outputSegmentation=None, *, model: str | None = None, modelFile: str | None = None,
                device: str = "auto", lesionThreshold: float | None = None, quick: bool = False,
                progress: ProgressCallback | None = None):
        """Segment ``inputVolume`` (blocking) and return the segmentation node.

        Args:
            inputVolume: a grey-scale CT ``vtkMRMLScalarVolumeNode`` in HU.
            outputSegmentation: a segmentation node whose segments are REPLACED by the result (all of them, after
                success); ``None`` (default) always creates a new node and never touches existing ones.
            model / modelFile: catalogue model id, or a checkpoint file (wins); both ``None``: default model.
            device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
            lesionThreshold: minimum of a lesion's maximum probability; ``None`` (default): the model's own value
                (``cascade.lesion_threshold`` in ``models.json``).
            quick: 3 mm grid for both stages (fast on slow CPUs).
            progress: ``progress(stage, fraction)``; raising :class:`LiverSegLib.CancelledError` in it cancels.

        Returns:
            The ``vtkMRMLSegmentationNode`` with a "Liver" segment (whole organ incl. lesions) and, when lesions were
            found, a "Liver lesion" segment; attributes ``LiverSeg.*`` record counts and volumes.

        Raises:
            InputError: bad input node (not a grey-scale volume, wrong scene), or no liver found.
            RunnerError: the model run failed (``.message``, ``.exitCode``).
            CancelledError: the run was cancelled.
        """
        volume = self._prepare(inputVolume, outputSegmentation)
        result = self.runner.run(volume, self.options(model, modelFile, device, lesionThreshold, quick), progress)
        return self.addResult(inputVolume, result, outputSegmentation, volume=volume, progress=progress)

    def start(self, inputVolume, outputSegmentation=None, *, model: str | None = None, modelFile: str | None = None,
              device: str = "auto", lesionThreshold: float | None = None, quick: bool = False,
              progress: ProgressCallback | None = None) -> None:
        """Like :meth:`process` but returns at once; call :meth:`poll` (e.g. from a QTimer) until it gives the node.

        Needs a runner with ``start``/``poll``/``cancel`` (both LiverSeg runners have them).
        """
        if self._pending is not None:
            raise RuntimeError("a segmentation is already running")
        volume = self._prepare(inputVolume, outputSegmentation)
        self.runner.start(volume, self.options(model, modelFile, device, lesionThreshold, quick), progress)
        self._pending = (inputVolume, outputSegmentation, volume, progress)

    def poll(self, timeout: float = 0.0):
        """``None`` while running; the segmentation node when done. Raises what :meth:`process` raises."""
        if self._pending is None:
            raise RuntimeError("nothing is running: call start() first")
        inputVolume, outputSegmentation, volume, progress = self._pending
        try:
            result = self.runner.poll(timeout)
        except BaseException:
            self._pending = None
            raise
        if result is None:
            return None
        self._pending = None
        return self.addResult(inputVolume, result, outputSegmentation, volume=volume, progress=progress)

    @property
    def isRunning(self) -> bool:
        return self._pending is not None

    def cancel(self) -> None:
        """Stop the running segmentation (the next :meth:`poll` raises ``CancelledError``); the scene is unchanged."""
        if self._pending is not None:
            self.runner.cancel()

    # ---------------------------------------------------------------- writing the result
    def addResult(self, inputVolume, result: SegmentationResult, outputSegmentation=None, *,
                  volume: Volume | None = None, progress: ProgressCallback | None = None):
        """Write ``result`` (on ``inputVolume``'s grid) as segments: a new node, or ``outputSegmentation`` replaced."""
        if inputVolume.GetScene() is not self.scene:
            raise InputError(f"volume '{inputVolume.GetName()}' was removed from the scene during the run")
        volume = volume if volume is not None else volumeFromNode(inputVolume, copy=False)
        if not result.labelmap.same_grid(volume, atol=1e-3):
            raise InputError("the result does not lie on the input volume's grid (was the volume changed during the "
                             "run?): nothing was added to the scene")
        if not np.any(result.labelmap.array_zyx):
            raise InputError(f"no liver was found in '{inputVolume.GetName()}' (is it an abdominal CT in HU?): "
                             "nothing was added to the scene")
        _report(progress, "import", 0.0)
        ensureConverterRules()  # slicer-core: segmentations made from now on can show/export closed surfaces
        segmentation, ids = buildSegmentation(result, inputVolume)
        attributes = resultAttributes(result, inputVolume)
        if outputSegmentation is None:
            node = self._addNewNode(inputVolume, segmentation, ids, attributes)
        else:
            node = self._replaceSegments(outputSegmentation, inputVolume, segmentation, ids, attributes)
        self.lastResult = result
        _report(progress, "import", 1.0)
        return node

    @staticmethod
    def _fill(node, segmentation, ids: list[str], attributes: dict[str, str]) -> None:
        target = node.GetSegmentation()
        target.SetSourceRepresentationName(BINARY_LABELMAP)
        for segmentId in ids:
            target.AddSegment(segmentation.GetSegment(segmentId), segmentId)
        for name in node.GetAttributeNames() or ():
            if name.startswith(ATTRIBUTE_PREFIX):
                node.RemoveAttribute(name)
        for name, value in attributes.items():
            node.SetAttribute(name, value)

    def _addNewNode(self, inputVolume, segmentation, ids, attributes):
        node = slicer.vtkMRMLSegmentationNode()
        node.SetName(self.scene.GenerateUniqueName(f"{inputVolume.GetName()} liver segmentation"))
        self._fill(node, segmentation, ids, attributes)
        self.scene.AddNode(node)
        try:
            node.CreateDefaultDisplayNodes()
            node.SetReferenceImageGeometryParameterFromVolumeNode(inputVolume)
            node.SetAndObserveTransformNodeID(inputVolume.GetTransformNodeID())
            placeInSubjectHierarchy(self.scene, node, inputVolume)
        except BaseException:
            self.removeNode(node)
            raise
        return node

    def _replaceSegments(self, node, inputVolume, segmentation, ids, attributes):
        wasModifying = node.StartModify()
        try:
            node.GetSegmentation().RemoveAllSegments()
            self._fill(node, segmentation, ids, attributes)
            node.SetReferenceImageGeometryParameterFromVolumeNode(inputVolume)
            node.SetAndObserveTransformNodeID(inputVolume.GetTransformNodeID())
            if node.GetDisplayNode() is None:
                node.CreateDefaultDisplayNodes()
        finally:
            node.EndModify(wasModifying)
        return node

    def removeNode(self, node) -> None:
        """Remove ``node`` with its display and storage nodes (and thereby its subject-hierarchy item)."""
        if node is None or node.GetScene() is not self.scene:
            return
        for i in reversed(range(node.GetNumberOfDisplayNodes())):
            if node.GetNthDisplayNode(i) is not None:
                self.scene.RemoveNode(node.GetNthDisplayNode(i))
        if node.GetStorageNode() is not None:
            self.scene.RemoveNode(node.GetStorageNode())
        self.scene.RemoveNode(node)

    # ---------------------------------------------------------------- planners and batch users
    def exportSurfaces(self, segmentationNode, folder, fileFormat: str = "STL", coordinateSystem: str = "LPS",
                       source: str = "labelmap"):
        """Closed surfaces of every segment as STL/OBJ files; see :func:`LiverSegSlicer.surfaces.exportSurfaces`."""
        from .surfaces import exportSurfaces

        return exportSurfaces(segmentationNode, folder, fileFormat, coordinateSystem, source=source)

    def exportDicom(self, segmentationNode, inputVolume, outputFolder, **kwargs):
        """DICOM SEG + TID 1500 SR of the segments, into the DICOM database when Slicer has one; see
        :func:`LiverSegSlicer.dicom_export.exportDicom`."""
        from .dicom_export import exportDicom

        return exportDicom(segmentationNode, inputVolume, outputFolder, **kwargs)

    def computeStatistics(self, segmentationNode, inputVolume):
        """Per-lesion table node; see :func:`LiverSegSlicer.statistics.computeStatistics`."""
        from .statistics import computeStatistics

        return computeStatistics(segmentationNode, inputVolume, scene=self.scene)

    def processFolder(self, inputFolder, outputFolder, **kwargs):
        """Batch: every CT in a folder; see :func:`LiverSegSlicer.batch.processFolder` (in-process by default)."""
        from .batch import processFolder

        return processFolder(inputFolder, outputFolder, **kwargs)
