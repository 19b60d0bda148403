"""LiverSeg, the 3D Slicer module: metadata, parameter node, Qt widget and self-test (thin by design).

The work is done by LiverSegSlicer (Qt-free MRML glue, tested headless) and LiverSegLib (the library). In Slicer's
Python console: ``import LiverSeg; LiverSeg.LiverSegLogic().process(getNode("CT"), device="cpu")``.
"""

import logging
import pathlib
import sys
import time
import traceback
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# `import LiverSegLib`: installed beside this file (extension), or one folder up (source checkout)
_HERE = pathlib.Path(__file__).resolve().parent
for _folder in [_HERE] if (_HERE / "LiverSegLib").is_dir() else [_HERE, _HERE.parent]:
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

# re-exported, so that LiverSeg.LiverSegLogic() etc. work in the Python console
from LiverSegSlicer import (  # noqa: E402, F401
    InProcessRunner,
    LiverSegLogic,
    RunnerError,
    SegmentOptions,
    SubprocessRunner,
    ensureDependencies,
    processFolder,
)

from LiverSegLib.errors import CancelledError  # noqa: E402

POLL_INTERVAL_MS = 200
# overall progress (percent) at the start and end of each stage the runner reports
STAGE_RANGES = {"read": (0, 2), "coarse": (2, 35), "fine": (35, 88), "post": (88, 94), "write": (94, 96),
                "import": (96, 100)}


class LiverSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Liver Segmentation (LiverSeg)")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.contributors = ["LiverSeg contributors"]
        self.parent.helpText = _(
            "Segments the liver and liver lesions in an abdominal CT (Hounsfield units) with Han's 2.5D coarse-to-fine "
            "cascade: one residual U-Net finds the liver, a second labels liver and lesions inside its bounding box, "
            "and a lesion is kept when its highest probability reaches the lesion threshold. Output: a segmentation "
            "with <i>Liver</i> (the whole organ, lesions included) and <i>Liver lesion</i> segments coded in SNOMED "
            "CT, a per-lesion table, and closed STL/OBJ surfaces in LPS coordinates. The model runs in a separate "
            "process: Slicer stays responsive and Cancel leaves the scene unchanged.<br><br><b>What it is not:</b> the "
            "shipped model (han-liver) was trained on four real CTs and synthetic CTs painted from public organ masks, "
            "for <b>non-commercial research use only</b> and <b>not for clinical use</b>; it is not validated for "
            "MRI, non-contrast or paediatric scans and does not tell primary tumours "
            'from metastases. See the <a href="https://github.com/liverseg/SlicerLiverSeg">documentation</a>.'
        )
        self.parent.acknowledgementText = _(
            "LiverSeg implements X. Han, <i>Automatic liver lesion segmentation using a deep convolutional neural "
            "network method</i>, ISBI LiTS challenge 2017, arXiv:1704.07239. It also draws on D. Yang et al., "
            "<i>Automatic liver segmentation using an adversarial image-to-image network</i> (DI2IN-AN), MICCAI "
            "2017; the Mixed U-Net for liver and liver-lesion segmentation (mixed pooling, histogram "
            "equalisation); E. Gibson et al., <i>Deep residual networks for automatic segmentation of laparoscopic "
            "videos of the liver</i>, SPIE Medical Imaging 2017; and J. Borgars et al., <i>Intraoperative "
            "segmentation through deep learning and mask post-processing in laparoscopic liver surgery</i> "
            "(SLiPPA), 2025. Test data: TotalSegmentator and LiTS sample CTs."
        )


@parameterNodeWrapper
class LiverSegParameterNode:
    """What the user chose; saved with the scene. ``model`` is a catalogue id ("" = the default model)."""

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    model: str = ""
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    quick: bool = False
    customLesionThreshold: bool = False  # off: the model's own threshold (models.json), shown in the slider
    lesionThreshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.8
    show3D: bool = True
    surfaceFormat: Annotated[str, Choice(["STL", "OBJ"])] = "STL"
    surfaceFolder: pathlib.Path


class LiverSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = self._parameterNode = self._parameterNodeGuiTag = None
        self._startTime, self._defaultModel = 0.0, ""

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LiverSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LiverSegLogic(runner=SubprocessRunner(log=self._appendLog))
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self._onPoll)
        self.ui.progressBar.visible = False
        self._populateModels()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        # setup() may have failed part-way (e.g. a missing package): clean up only what exists
        if self.logic is not None:
            self.logic.cancel()  # no-op when nothing runs
        if getattr(self, "_timer", None) is not None:
            self._timer.stop()
        self.removeObservers()

    def onReload(self) -> None:
        """Developer "Reload": also reload LiverSegSlicer and LiverSegLib, so that edits to them take effect."""
        for name in [n for n in sys.modules if n.split(".")[0] in ("LiverSegSlicer", "LiverSegLib")]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:  # a run keeps going when the user switches modules; the timer still polls it
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUI)

    def onSceneStartClose(self, caller, event) -> None:
        self.logic.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        helper = ScriptedLoadableModuleLogic()
        helper.moduleName = "LiverSeg"  # the singleton parameter node is tagged with the module's name
        self.setParameterNode(LiverSegParameterNode(helper.getParameterNode()))
        firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        if not self._parameterNode.inputVolume and firstVolume:
            self._parameterNode.inputVolume = firstVolume
        if str(self._parameterNode.surfaceFolder) in ("", "."):
            self._parameterNode.surfaceFolder = pathlib.Path(slicer.app.defaultScenePath) / "LiverSeg surfaces"

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUI)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUI)
            self._updateGUI()

    def _updateGUI(self, caller=None, event=None) -> None:
        """Button states and the model choice follow the parameter node."""
        p, running = self._parameterNode, self.logic.isRunning
        if p is None:
            return
        self.ui.segmentButton.enabled = running or p.inputVolume is not None
        self.ui.exportButton.enabled = not running and p.outputSegmentation is not None
        index = max(0, self.ui.modelComboBox.findData(p.model or self._defaultModel))
        if self.ui.modelComboBox.currentIndex != index:
            self.ui.modelComboBox.currentIndex = index
        self.ui.lesionThresholdSliderWidget.enabled = p.customLesionThreshold
        if not p.customLesionThreshold:  # show the value the run will use: the model's own
            modelValue = LiverSegLogic.modelLesionThreshold(p.model or None)
            if modelValue is not None and abs(p.lesionThreshold - modelValue) > 1e-6:
                p.lesionThreshold = modelValue

    def _populateModels(self) -> None:
        """Fill the model list from the catalogue (it cannot be read before jsonschema is installed: then later)."""
        combo = self.ui.modelComboBox
        combo.blockSignals(True)
        combo.clear()
        self._defaultModel = ""
        try:
            from LiverSegLib.registry import load_registry

            registry = load_registry()
            for modelId in registry.ids():
                combo.addItem(f"{registry.get(modelId).title} ({modelId})", modelId)
            self._defaultModel = registry.default_id or ""
        except Exception as exc:  # no catalogue, or its dependencies are not installed yet
            combo.addItem(_("Default model"), "")
            self._appendLog(_("Model list not available yet: {error}").format(error=exc))
        combo.blockSignals(False)

    def onModelChanged(self, index: int) -> None:
        if self._parameterNode is not None and index >= 0:
            modelId = self.ui.modelComboBox.itemData(index) or ""
            self._parameterNode.model = "" if modelId == self._defaultModel else modelId

    # ------------------------------------------------------------------ segment / cancel
    def onSegmentButton(self) -> None:
        if self.logic.isRunning:  # the button reads "Cancel" while a run is going
            self.logic.cancel()
            self._setStatus(_("Cancelling..."))
            return
        with slicer.util.tryWithErrorDisplay(_("Could not start the segmentation.")):  # no wait cursor: may ask
            if not ensureDependencies(ask=True, status=self._setStatus):
                self._setStatus(_("Not started: the required Python packages are not installed."))
                return
            if not self._defaultModel:
                self._populateModels()
                self._updateGUI()
            p = self._parameterNode
            self.ui.logTextEdit.clear()
            self._appendLog(_("Segmenting '{volume}': model {model}, device {device}, quick mode {quick}.").format(
                volume=p.inputVolume.GetName(), model=p.model or self._defaultModel, device=p.device, quick=p.quick))
            # None unless the user chose a threshold: the model's own value from models.json then applies
            self.logic.start(p.inputVolume, p.outputSegmentation, model=p.model or None, device=p.device,
                             lesionThreshold=p.lesionThreshold if p.customLesionThreshold else None, quick=p.quick,
                             progress=self._onProgress)
            self._startTime = time.monotonic()
            self._setRunning(True)
            self._setStatus(_("Starting..."))

    def _onPoll(self) -> None:
        """Called every POLL_INTERVAL_MS while running: delivers progress and, at the end, the result."""
        try:
            node = self.logic.poll()
        except CancelledError:
            self._setRunning(False)
            self._setStatus(_("Cancelled: the scene was not changed."))
            return
        except Exception as exc:
            self._setRunning(False)
            message = getattr(exc, "message", None) or str(exc)
            self._setStatus(_("Failed: {message}").format(message=message))
            self._appendLog(traceback.format_exc())
            slicer.util.errorDisplay(_("Segmentation failed:\n\n{message}").format(message=message),
                                     detailedText=traceback.format_exc())
            return
        if node is not None:
            self._setRunning(False)
            self._showResult(node)

    def _onProgress(self, stage: str, fraction: float) -> None:
        names = {"read": _("reading the volume"), "coarse": _("finding the liver"),
                 "fine": _("segmenting liver and lesions"), "post": _("post-processing"),
                 "write": _("writing results"), "import": _("adding segments")}
        low, high = STAGE_RANGES.get(stage, (self.ui.progressBar.value, self.ui.progressBar.value))
        self.ui.progressBar.value = max(self.ui.progressBar.value, int(low + (high - low) * float(fraction)))
        self._setStatus(_("{stage}... ({seconds:.0f} s)").format(stage=names.get(stage, stage),
                                                                  seconds=time.monotonic() - self._startTime))

    def _setRunning(self, running: bool) -> None:
        self.ui.segmentButton.text = _("Cancel") if running else _("Segment")
        self.ui.segmentButton.toolTip = (_("Stop the segmentation; the scene is left unchanged.") if running
                                         else _("Segment the liver and liver lesions in the input volume."))
        for widget in (self.ui.inputsCollapsibleButton, self.ui.advancedCollapsibleButton,
                       self.ui.exportCollapsibleButton):
            widget.enabled = not running
        self.ui.progressBar.value = 0
        self.ui.progressBar.visible = running
        (self._timer.start if running else self._timer.stop)()
        self._updateGUI()

    def _showResult(self, node) -> None:
        p = self._parameterNode
        p.outputSegmentation = node  # a new node when "Create new segmentation" was chosen: export uses it
        with slicer.util.tryWithErrorDisplay(_("The segmentation was added, but showing it failed."), waitCursor=True):
            if p.show3D:
                node.CreateClosedSurfaceRepresentation()
            table = self.logic.computeStatistics(node, p.inputVolume)
            self.ui.statisticsTableView.setMRMLTableNode(table)
            self.ui.statisticsCollapsibleButton.collapsed = False
            value = table.GetAttribute
            status = _("Done in {seconds:.0f} s: liver {liver:.0f} mL, {count} lesion(s), {lesions:.1f} mL."
                       ).format(seconds=time.monotonic() - self._startTime, count=value("LiverSeg.LesionCount"),
                                liver=float(value("LiverSeg.LiverVolumeMl")),
                                lesions=float(value("LiverSeg.LesionVolumeMl")))
            warnings = list(getattr(self.logic.lastResult, "warnings", ()))
            if warnings:  # e.g. an implausible liver volume: the status line points at the log, not only the log
                status = _("{status} {count} warning(s): see the log.").format(status=status, count=len(warnings))
            self._setStatus(status)
            for warning in warnings:
                self._appendLog(_("Warning: {warning}").format(warning=warning))

    # ------------------------------------------------------------------ export
    def onExportButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Surface export failed."), waitCursor=True):
            p = self._parameterNode
            folder = str(p.surfaceFolder)
            if folder in ("", "."):
                raise ValueError(_("Choose the folder for the surface files."))
            paths = self.logic.exportSurfaces(p.outputSegmentation, folder, p.surfaceFormat)
            for path in paths:
                self._appendLog(str(path))
            self._setStatus(_("Wrote {count} surface file(s) in LPS coordinates to {folder}").format(
                count=len(paths), folder=folder))

    # ------------------------------------------------------------------ feedback
    def _setStatus(self, text: str) -> None:
        self.ui.statusLabel.setText(text)
        slicer.util.showStatusMessage(text, 3000)

    def _appendLog(self, text: str) -> None:
        logging.info(text)
        self.ui.logTextEdit.appendPlainText(text)


class LiverSegTest(ScriptedLoadableModuleTest):
    """Runs inside a real Slicer ("Reload and Test", or ctest): the path users take, end to end.

    Makes sure the dependencies are there (installs them without asking: a test run is the user's request; skips
    with the reason when that is impossible, e.g. offline without PyTorch), loads a real CT (SampleData's CTLiver,
    or the dcmqi 3-slice CT when that cannot be downloaded), segments it with the shipped model through the
    SubprocessRunner that the Segment button uses, and checks the segments, their terminology and the statistics.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_segmentRealCtInChildProcess()

    def _loadRealCt(self):
        try:
            import SampleData

            node = SampleData.downloadSample("CTLiver")
            if node is not None:
                return node, "SampleData CTLiver"
        except Exception as exc:  # offline, or a Slicer without that sample
            logging.info(f"CTLiver not available ({exc}): using the dcmqi 3-slice CT")
        from LiverSegSlicer.volumes import LPS_FROM_RAS

        from LiverSegLib.data.samples import load_case

        ct, _reference = load_case("dcmqi_3slice")
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "dcmqi 3-slice CT")
        slicer.util.updateVolumeFromArray(node, ct.array_zyx)
        node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(LPS_FROM_RAS @ ct.index_to_physical_matrix()))
        return node, "dcmqi 3-slice CT"

    def test_segmentRealCtInChildProcess(self):
        from LiverSegSlicer.dependencies import missingRequirements, torchProblem

        try:
            ensureDependencies(ask=False, status=self.delayDisplay)
        except Exception as exc:  # noqa: BLE001 - reported as the skip reason
            logging.warning(f"could not install the dependencies: {exc}")
        problems = ([torchProblem()] if torchProblem() else []) + missingRequirements()
        if problems:
            self.skipTest(f"LiverSeg's dependencies are not available and could not be installed: {problems}")
        try:
            volumeNode, name = self._loadRealCt()
        except Exception as exc:  # noqa: BLE001 - no network and no cached sample
            self.skipTest(f"no real CT could be loaded: {exc}")

        self.delayDisplay(f"Segmenting {name} in a child process (CPU, quick mode)")
        logic = LiverSegLogic(runner=SubprocessRunner(log=logging.info))
        segmentationNode = logic.process(volumeNode, device="cpu", quick=True)

        segmentation = segmentationNode.GetSegmentation()
        liverId = segmentation.GetSegmentIdBySegmentName("Liver")
        self.assertTrue(liverId, "no Liver segment")
        self.assertIn("SCT^10200004^Liver", segmentation.GetSegment(liverId).GetTerminology())
        lesionId = segmentation.GetSegmentIdBySegmentName("Liver lesion")
        if lesionId:
            self.assertIn("SCT^108369006^Neoplasm", segmentation.GetSegment(lesionId).GetTerminology())
        self.assertEqual(bool(lesionId), len(logic.lastResult.lesions) > 0)
        liverMl = float(segmentationNode.GetAttribute("LiverSeg.LiverVolumeMl"))
        self.assertGreater(liverMl, 0.0)
        self.assertAlmostEqual(liverMl, logic.lastResult.liver_volume_ml, places=1)
        table = logic.computeStatistics(segmentationNode, volumeNode)
        self.assertEqual(table.GetNumberOfRows(), len(logic.lastResult.lesions))
        self.assertEqual(table.GetAttribute("LiverSeg.LesionCount"), str(len(logic.lastResult.lesions)))
        self.delayDisplay(f"Test passed: liver {liverMl:.0f} mL, {len(logic.lastResult.lesions)} lesion(s)")
