"""Static checks of the Slicer module's GUI side: ``LiverSeg.py``, its .ui, parameter node, strings and icon.

No Slicer application is available here, so what would break the module's GUI is checked by reading the files: the
widget names the code uses exist in the .ui and the .ui's ``SlicerParameterName`` properties are fields of the
parameter node, on widgets the parameter node wrapper can connect to; user-visible strings go through ``_()``.
``LiverSeg.py`` imports qt and Slicer's GUI modules, so it is parsed with ``ast``, never imported. The extension's
CMake files: test_extension_cmake.py.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
import struct
import sys
import xml.etree.ElementTree as ET

import pytest
from extension_sources import ICON, MODULE_DIR, MODULE_PY, ROOT, UI_FILE, module_class, module_tree

# ---------------------------------------------------------------------------------------------- LiverSeg.py (ast)


def _parameter_fields() -> dict[str, ast.AnnAssign]:
    cls = module_class("LiverSegParameterNode")
    assert [ast.unparse(d) for d in cls.decorator_list] == ["parameterNodeWrapper"]
    return {s.target.id: s for s in cls.body if isinstance(s, ast.AnnAssign)}


def test_module_file_is_thin_and_parses():
    lines = MODULE_PY.read_text().splitlines()
    assert len(lines) < 400, f"LiverSeg.py has {len(lines)} lines: move non-Qt code to LiverSegSlicer"
    classes = {n.name for n in module_tree().body if isinstance(n, ast.ClassDef)}
    assert {"LiverSeg", "LiverSegWidget", "LiverSegParameterNode", "LiverSegTest"} <= classes


def test_module_metadata():
    init = next(f for f in module_class("LiverSeg").body if isinstance(f, ast.FunctionDef) and f.name == "__init__")
    assigned = {ast.unparse(s.targets[0]): s.value for s in init.body if isinstance(s, ast.Assign)}
    assert ast.literal_eval(assigned["self.parent.title"].args[0]) == "Liver Segmentation (LiverSeg)"
    assert ast.unparse(assigned["self.parent.categories"]) == "[translate('qSlicerAbstractCoreModule', 'Segmentation')]"
    help_text = ast.literal_eval(assigned["self.parent.helpText"].args[0])
    assert "non-commercial" in help_text and "not for clinical use" in help_text
    acknowledgement = ast.literal_eval(assigned["self.parent.acknowledgementText"].args[0])
    for citation in ("Han", "arXiv:1704.07239", "Yang et al.", "DI2IN-AN", "MICCAI 2017", "Mixed U-Net", "Gibson",
                     "SLiPPA"):
        assert citation in acknowledgement, citation
    for key in ("self.parent.title", "self.parent.helpText", "self.parent.acknowledgementText"):
        assert ast.unparse(assigned[key].func) == "_", f"{key} is not translated"


def test_parameter_node_fields():
    fields = _parameter_fields()
    types_ = {name: ast.unparse(f.annotation) for name, f in fields.items()}
    assert types_ == {
        "inputVolume": "vtkMRMLScalarVolumeNode",
        "outputSegmentation": "vtkMRMLSegmentationNode",
        "model": "str",
        "device": "Annotated[str, Choice(['auto', 'cpu', 'cuda'])]",
        "quick": "bool",
        "customLesionThreshold": "bool",
        "lesionThreshold": "Annotated[float, WithinRange(0.0, 1.0)]",
        "show3D": "bool",
        "surfaceFormat": "Annotated[str, Choice(['STL', 'OBJ'])]",
        "surfaceFolder": "pathlib.Path",
    }
    defaults = {name: ast.literal_eval(f.value) for name, f in fields.items() if f.value is not None}
    # customLesionThreshold off by default: the model's own threshold (models.json) applies, the slider shows it
    assert defaults == {"model": "", "device": "auto", "quick": False, "customLesionThreshold": False,
                        "lesionThreshold": 0.8, "show3D": True, "surfaceFormat": "STL"}


# ------------------------------------------------------------------------------------------------------- the .ui

# which widget class the parameter node wrapper's GUI connectors bind to which (unannotated) field type
CONNECTABLE = {
    "QCheckBox": ("bool",), "QComboBox": ("Annotated[str, Choice",), "QLineEdit": ("str",),
    "ctkSliderWidget": ("Annotated[float, WithinRange",), "ctkPathLineEdit": ("pathlib.Path",),
    "qMRMLNodeComboBox": ("vtkMRML",),
}


def _ui() -> ET.Element:
    return ET.parse(UI_FILE).getroot()


def _widgets() -> dict[str, ET.Element]:
    widgets = {}
    for w in _ui().iter("widget"):
        assert w.get("name") not in widgets, f"widget name {w.get('name')} is used twice in the .ui"
        widgets[w.get("name")] = w
    return widgets


def _prop(widget: ET.Element, name: str) -> ET.Element | None:
    return next((p for p in widget.findall("property") if p.get("name") == name), None)


def test_ui_root_and_custom_widgets():
    root = _ui()
    assert root.get("version") == "4.0" and root.findtext("class") == "LiverSeg"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "LiverSeg"
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    assert {c for c in used if not c.startswith("Q")} <= declared, "declare every ctk/qMRML class in <customwidgets>"


def test_ui_has_the_widgets_the_code_uses():
    used = set()
    for node in ast.walk(module_tree()):
        if isinstance(node, ast.Attribute) and ast.unparse(node.value) == "self.ui":
            used.add(node.attr)
    missing = used - set(_widgets())
    assert not missing, f"LiverSeg.py uses self.ui.{sorted(missing)} which LiverSeg.ui does not define"
    for name in ("segmentButton", "progressBar", "statusLabel", "logTextEdit", "exportButton", "statisticsTableView",
                 "modelComboBox"):
        assert name in used, f"{name} of the .ui is never used by the widget"


def test_ui_parameter_names_are_parameter_node_fields_on_connectable_widgets():
    fields = _parameter_fields()
    bound = {}
    for name, w in _widgets().items():
        prop = _prop(w, "SlicerParameterName")
        if prop is None:
            continue
        assert prop.get("stdset") == "0", f"{name}: SlicerParameterName must be a dynamic property (stdset=0)"
        parameter = prop.findtext("string")
        assert parameter in fields, f"{name}: SlicerParameterName {parameter!r} is not a field of the parameter node"
        annotation = ast.unparse(fields[parameter].annotation)
        assert annotation.startswith(CONNECTABLE.get(w.get("class"), ("<none>",))), \
            f"{name} ({w.get('class')}) cannot be connected to {parameter}: {annotation}"
        bound[parameter] = w
    # every field except the model (a catalogue list filled by the code) is bound to a widget
    assert set(fields) - set(bound) == {"model"}
    for parameter in ("inputVolume", "outputSegmentation"):
        node_types = [s.text for s in _prop(bound[parameter], "nodeTypes").iter("string")]
        assert node_types == [ast.unparse(fields[parameter].annotation)]
    slider = bound["lesionThreshold"]
    assert [float(_prop(slider, k).findtext("double")) for k in ("minimum", "maximum", "singleStep", "value")] == \
        [0.0, 1.0, 0.01, 0.8]
    assert _prop(bound["show3D"], "checked").findtext("bool") == "true"
    assert _prop(bound["surfaceFolder"], "filters").findtext("set") == "ctkPathLineEdit::Dirs"


def test_ui_mrml_widgets_receive_the_scene():
    widgets = _widgets()
    needs_scene = {n for n, w in widgets.items() if w.get("class") in ("qMRMLNodeComboBox", "qMRMLTableView")}
    connected = {c.findtext("receiver") for c in _ui().iter("connection")
                 if c.findtext("sender") == "LiverSeg" and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert needs_scene and needs_scene <= connected


# ----------------------------------------------------------------------------------------------- translated strings

# calls whose (first) string argument the user reads
USER_TEXT_CALLS = {"setText", "setToolTip", "setWindowTitle", "showStatusMessage", "errorDisplay", "warningDisplay",
                   "infoDisplay", "messageBox", "confirmOkCancelDisplay", "confirmYesNoDisplay", "tryWithErrorDisplay",
                   "delayDisplay", "addItem", "appendPlainText", "_setStatus", "_appendLog"}
USER_TEXT_PROPERTIES = {"text", "toolTip", "windowTitle", "statusTip", "placeholderText"}


def _untranslated(node: ast.AST) -> bool:
    """True for literal text with letters that does not go through _() (f-strings included)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return bool(re.search(r"[A-Za-z]", node.value))
    if isinstance(node, ast.JoinedStr):
        return any(_untranslated(v) for v in node.values if isinstance(v, ast.Constant))
    if isinstance(node, ast.IfExp):
        return _untranslated(node.body) or _untranslated(node.orelse)
    if isinstance(node, ast.BinOp):
        return _untranslated(node.left) or _untranslated(node.right)
    return False  # _() / translate() calls, .format() on them, variables


def test_user_visible_strings_are_translated():
    problems, tree = [], module_tree()
    test_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "LiverSegTest")
    skip = {id(n) for n in ast.walk(test_class)}  # the self-test's messages are for developers
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in USER_TEXT_CALLS and node.args and _untranslated(node.args[0]):
                problems.append(f"line {node.lineno}: {ast.unparse(node)[:80]}")
            if name == "_" and not (len(node.args) == 1 and isinstance(node.args[0], ast.Constant)):
                problems.append(f"line {node.lineno}: _() of a non-literal: {ast.unparse(node)[:80]}")
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Attribute) and target.attr in USER_TEXT_PROPERTIES \
                        and _untranslated(node.value):
                    problems.append(f"line {node.lineno}: {ast.unparse(node)[:80]}")
        elif isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args \
                and _untranslated(node.exc.args[0]):  # shown to the user by tryWithErrorDisplay
            problems.append(f"line {node.lineno}: {ast.unparse(node)[:80]}")
    assert not problems, "user-visible strings not wrapped in _():\n" + "\n".join(problems)


def test_the_translation_check_can_fail():
    assert _untranslated(ast.parse('"Segment"').body[0].value)
    assert _untranslated(ast.parse('f"Done in {s} s"').body[0].value)
    assert not _untranslated(ast.parse('_("Done in {s} s").format(s=1)').body[0].value)
    assert not _untranslated(ast.parse('f"{title} ({modelId})"').body[0].value)


# ------------------------------------------------------------------------------------------------ dependencies, API


def _pyproject_dependencies() -> list[str]:
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies\s*=\s*\[(.*?)\]", text, re.S | re.M).group(1)
    return re.findall(r'"([^"]+)"', block)


def test_first_run_requirements_match_the_library_dependencies():
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))
    from LiverSegSlicer.dependencies import missingRequirements, readRequirements, torchProblem

    requirements = readRequirements()
    # numpy, vtk and pydicom ship with Slicer; matplotlib is only for the CLI's overview picture (Slicer's runner
    # asks none). highdicom and dicomweb-client need pydicom 3, and Slicer 5.10 bundles pydicom 2.4.4 for its DICOM
    # module: installing them on first use would replace Slicer's pydicom, so the DICOM export says how to get
    # highdicom instead (dicom_export.py); dicomweb-client is the CLI's PACS pull/push.
    not_in_slicer = {"numpy", "vtk", "matplotlib", "pydicom", "highdicom", "dicomweb-client"}
    expected = [d for d in _pyproject_dependencies() if re.match(r"[A-Za-z0-9_.-]+", d).group(0) not in not_in_slicer]
    assert sorted(r.spec for r in requirements) == sorted(expected), "requirements.txt differs from pyproject.toml"
    assert [r.via for r in requirements if r.name == "torch"] == ["PyTorchUtils"]
    for r in requirements:  # the import names are right (all are installed here)
        assert importlib.util.find_spec(r.module) is not None, f"{r.spec}: no module named {r.module}"
    assert missingRequirements() == [] and torchProblem() is None  # this environment has everything
    # the module file reads the same file instead of keeping its own list
    assert "REQUIREMENTS = {" not in MODULE_PY.read_text()


def test_version_checks_report_old_packages(tmp_path):
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))
    from LiverSegSlicer.dependencies import missingRequirements, readRequirements, torchProblem

    path = tmp_path / "requirements.txt"
    path.write_text("torch>=99.0  # via: PyTorchUtils\nnumpy>=1.0\nscipy>=999\nno-such-dist>=1  # import: nosuchmod\n")
    reqs = readRequirements(path)
    assert [(r.name, r.module, r.minimum) for r in reqs][-1] == ("no-such-dist", "nosuchmod", "1")
    assert missingRequirements(reqs) == ["scipy>=999", "no-such-dist>=1"]
    assert "older than the 99.0 LiverSeg needs" in torchProblem(reqs)


def test_names_the_widget_uses_exist_in_liversegslicer():
    slicer = pytest.importorskip("slicer", reason="slicer-core is needed to import LiverSegSlicer")
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))
    import LiverSegSlicer

    tree = module_tree()
    imported = [a.name for s in tree.body if isinstance(s, ast.ImportFrom) and s.module == "LiverSegSlicer"
                for a in s.names]
    assert "LiverSegLogic" in imported
    assert [n for n in imported if not hasattr(LiverSegSlicer, n)] == []
    logic = LiverSegSlicer.LiverSegLogic(scene=slicer.vtkMRMLScene(), runner=object())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and ast.unparse(node.value) == "self.logic":
            assert hasattr(logic, node.attr), f"LiverSegLogic has no {node.attr} (used by the widget)"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                ast.unparse(node.func.value) in ("self.logic", "logic"):
            signature = inspect.signature(getattr(logic, node.func.attr))
            signature.bind(*node.args, **{k.arg: None for k in node.keywords})  # raises on a wrong keyword


# ------------------------------------------------------------------------------------------------------------ icon


def test_icon_is_a_128_pixel_png_with_content():
    data = ICON.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (128, 128)
    from matplotlib.image import imread

    pixels = imread(ICON)
    assert pixels.shape[:2] == (128, 128)
    opaque = pixels[..., 3] > 0.5 if pixels.shape[2] == 4 else pixels[..., 0] >= 0
    assert 0.2 < opaque.mean() < 0.9, "the icon should be a shape on a transparent background"
    liver = (abs(pixels[..., 0] - 0.867) < 0.05) & (abs(pixels[..., 1] - 0.510) < 0.05) & opaque
    assert liver.mean() > 0.1, "the icon should be mostly liver-coloured"

