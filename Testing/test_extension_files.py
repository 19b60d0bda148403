"""Static checks of the Slicer extension: CMake files, the module's .ui, parameter node, strings, icon.

No Slicer application is available here, so what would break a Slicer build or the module's GUI is checked by
reading the files: every file the CMake lists exists and every file that must ship is listed (or matched by a glob
the CMake uses); the library lands beside the module where ``LiverSegLib`` looks for ``Resources``; the widget names
the code uses exist in the .ui and the .ui's ``SlicerParameterName`` properties are fields of the parameter node, on
widgets the parameter node wrapper can connect to; user-visible strings go through ``_()``. ``LiverSeg.py`` imports
qt and Slicer's GUI modules, so it is parsed with ``ast``, never imported. Where cmake is installed, the extension is
also configured against a stand-in Slicer CMake package that records what the Slicer macros receive.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
import shutil
import struct
import subprocess
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "LiverSeg"
MODULE_PY = MODULE_DIR / "LiverSeg.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "LiverSeg.ui"
ICON = MODULE_DIR / "Resources" / "Icons" / "LiverSeg.png"

# ----------------------------------------------------------------------------------------------------- CMake parsing


def _cmake_commands(path: Path) -> list[tuple[str, list[str]]]:
    """``(command, arguments)`` of a CMake file: quoted/unquoted arguments, comments and line continuations."""
    text, i, commands = path.read_text(), 0, []
    while i < len(text):
        m = re.compile(r"\s*(#[^\n]*\n?)?").match(text, i)
        if m and m.end() > i:
            i = m.end()
            continue
        m = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(").match(text, i)
        assert m, f"{path.name}: cannot parse near {text[i:i + 40]!r}"
        name, i, args, depth = m.group(1).lower(), m.end(), [], 0
        while True:
            c = text[i]
            if c.isspace():
                i += 1
            elif c == "#":
                i = text.index("\n", i)
            elif c == '"':
                j, value = i + 1, []
                while text[j] != '"':
                    if text[j] == "\\" and text[j + 1] == "\n":  # line continuation inside a quoted argument
                        j += 2
                        continue
                    if text[j] == "\\":
                        value.append(text[j + 1])
                        j += 2
                        continue
                    value.append(text[j])
                    j += 1
                args.append("".join(value))
                i = j + 1
            elif c == "(":
                depth, i = depth + 1, i + 1
            elif c == ")":
                i += 1
                if depth == 0:
                    break
                depth -= 1
            else:
                m = re.compile(r'[^\s()"#]+').match(text, i)
                args.append(m.group(0))
                i = m.end()
        commands.append((name, args))
    return commands


def _expand(value: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: variables.get(m.group(1), m.group(0)), value)


def _variables(commands) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, args in commands:
        if name == "set" and args:
            out[args[0]] = args[1:]
    return out


def _call(commands, name: str) -> list[str]:
    found = [args for n, args in commands if n == name]
    assert len(found) == 1, f"expected one {name}() call, found {len(found)}"
    return found[0]


def _keyword_args(args: list[str], keywords: set[str]) -> dict[str, list[str]]:
    """Split a macro's arguments at its keywords: ``{"SCRIPTS": [...], "WITH_GENERIC_TESTS": [], ...}``."""
    out: dict[str, list[str]] = {}
    current = None
    for a in args:
        if a in keywords:
            current = a
            out[a] = []
        elif current is not None:
            out[current].append(a)
    return out


MODULE_CMAKE = _cmake_commands(MODULE_DIR / "CMakeLists.txt")
TOP_CMAKE = _cmake_commands(ROOT / "CMakeLists.txt")


def _module_lists() -> tuple[list[str], list[str]]:
    variables = _variables(MODULE_CMAKE)
    scalars = {"MODULE_NAME": variables["MODULE_NAME"][0]}
    scripts = [_expand(v, scalars) for v in variables["MODULE_PYTHON_SCRIPTS"]]
    resources = [_expand(v, scalars) for v in variables["MODULE_PYTHON_RESOURCES"]]
    return scripts, resources


def _globs(variable: str) -> list[tuple[str, bool]]:
    """The patterns (relative to the repository root) of the ``file(GLOB[_RECURSE] variable ...)`` call."""
    for name, args in TOP_CMAKE:
        if name == "file" and args[0] in ("GLOB", "GLOB_RECURSE") and args[1] == variable:
            recursive = args[0] == "GLOB_RECURSE"
            rest = [a for a in args[2:] if a != "CONFIGURE_DEPENDS"]
            if "RELATIVE" in rest:
                k = rest.index("RELATIVE")
                assert rest[k + 1] == "${CMAKE_CURRENT_SOURCE_DIR}", "paths must be relative to the repository root"
                del rest[k : k + 2]
            patterns = [p.replace("${CMAKE_CURRENT_SOURCE_DIR}/", "") for p in rest]
            return [(p, recursive) for p in patterns]
    raise AssertionError(f"no file(GLOB...) sets {variable} in CMakeLists.txt")


def _glob_files(patterns: list[tuple[str, bool]]) -> set[Path]:
    """Files the CMake globs match: GLOB_RECURSE matches the last component in every sub-folder (like rglob)."""
    found: set[Path] = set()
    for pattern, recursive in patterns:
        folder, name = pattern.rsplit("/", 1) if "/" in pattern else ("", pattern)
        base = ROOT / folder
        assert not any(ch in folder for ch in "*?["), f"wildcards only in the file name: {pattern}"
        found |= {p for p in (base.rglob(name) if recursive else base.glob(name)) if p.is_file()}
    return found


def _shipped(path: Path) -> bool:
    return "__pycache__" not in path.parts and path.suffix != ".pyc"


# ------------------------------------------------------------------------------------------------ module CMakeLists


def test_every_file_the_module_cmake_lists_exists():
    scripts, resources = _module_lists()
    assert scripts[0] == "LiverSeg.py" and "Resources/UI/LiverSeg.ui" in resources
    missing = [f for f in scripts + resources if not (MODULE_DIR / f).is_file()]
    assert not missing, f"LiverSeg/CMakeLists.txt lists files that do not exist: {missing}"
    assert len(set(scripts)) == len(scripts) and len(set(resources)) == len(resources), "a file is listed twice"


def test_every_python_file_and_resource_of_the_module_is_listed():
    scripts, resources = _module_lists()
    python = {p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*.py") if _shipped(p)}
    assert python - set(scripts) == set(), "add these to MODULE_PYTHON_SCRIPTS in LiverSeg/CMakeLists.txt"
    shipped = {p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "Resources").rglob("*")
               if p.is_file() and _shipped(p) and p.suffix != ".py"}
    assert shipped - set(resources) == set(), "add these to MODULE_PYTHON_RESOURCES in LiverSeg/CMakeLists.txt"


def test_module_cmake_builds_the_scripted_module_with_its_tests():
    args = _keyword_args(_call(MODULE_CMAKE, "slicermacrobuildscriptedmodule"),
                         {"NAME", "SCRIPTS", "RESOURCES", "WITH_GENERIC_TESTS", "WITH_SUBDIR"})
    assert args["NAME"] == ["${MODULE_NAME}"] and _variables(MODULE_CMAKE)["MODULE_NAME"] == ["LiverSeg"]
    assert args["SCRIPTS"] == ["${MODULE_PYTHON_SCRIPTS}"] and args["RESOURCES"] == ["${MODULE_PYTHON_RESOURCES}"]
    assert "WITH_GENERIC_TESTS" in args and "WITH_SUBDIR" not in args  # the library is installed beside LiverSeg.py
    names = [name for name, _ in MODULE_CMAKE]
    unittest = names.index("slicer_add_python_unittest")
    assert names[unittest - 1] == "if" and MODULE_CMAKE[unittest - 1][1] == ["BUILD_TESTING"]
    assert MODULE_CMAKE[unittest][1] == ["SCRIPT", "${MODULE_NAME}.py"]
    # the registered script must hold the ScriptedLoadableModuleTest that ctest runs
    test_class = _class("LiverSegTest")
    assert [b.id for b in test_class.bases] == ["ScriptedLoadableModuleTest"]
    assert {"runTest", "setUp"} <= {f.name for f in test_class.body if isinstance(f, ast.FunctionDef)}


# --------------------------------------------------------------------------------------------- extension CMakeLists


def test_extension_metadata():
    names = [name for name, _ in TOP_CMAKE]
    assert names[0] == "cmake_minimum_required" and _call(TOP_CMAKE, "project") == ["LiverSeg"]
    meta = {k: " ".join(v) for k, v in _variables(TOP_CMAKE).items() if k.startswith("EXTENSION_")}
    assert meta["EXTENSION_NAME"] == "LiverSeg" and meta["EXTENSION_CATEGORY"] == "Segmentation"
    assert "PyTorch" in meta["EXTENSION_DEPENDS"].split()
    assert meta["EXTENSION_HOMEPAGE"].startswith("https://")
    assert "not for clinical use" in meta["EXTENSION_DESCRIPTION"] and meta["EXTENSION_CONTRIBUTORS"]
    # the icon and screenshot URLs point at files of this repository
    for key in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        for url in meta[key].split():
            relative = re.sub(r"^https://raw\.githubusercontent\.com/[^/]+/[^/]+/[^/]+/", "", url)
            assert relative != url and (ROOT / relative).is_file(), f"{key}: {url} is not a file of the repository"
    order = ["find_package", "include", "add_subdirectory"]
    assert [n for n in names if n in order][:3] == order
    assert _call(TOP_CMAKE, "find_package") == ["Slicer", "REQUIRED"]
    includes = [args for n, args in TOP_CMAKE if n == "include"]
    assert includes == [["${Slicer_USE_FILE}"], ["${Slicer_EXTENSION_GENERATE_CONFIG}"], ["${Slicer_EXTENSION_CPACK}"]]
    assert TOP_CMAKE[-1] == ("include", ["${Slicer_EXTENSION_CPACK}"])
    assert _call(TOP_CMAKE, "add_subdirectory") == ["LiverSeg"]


def test_library_and_resources_are_installed_beside_the_module():
    args = _keyword_args(_call(TOP_CMAKE, "ctkmacrocompilepythonscript"),
                         {"TARGET_NAME", "SCRIPTS", "RESOURCES", "DESTINATION_DIR", "INSTALL_DIR", "NO_INSTALL_SUBDIR"})
    # the same folders slicerMacroBuildScriptedModule uses for LiverSeg.py (without WITH_SUBDIR)
    assert args["DESTINATION_DIR"] == ["${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}"]
    assert args["INSTALL_DIR"] == ["${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}"]
    assert "NO_INSTALL_SUBDIR" in args
    assert args["SCRIPTS"] == ["${LiverSegLib_PYTHON_SCRIPTS}"]
    assert args["RESOURCES"] == ["${LiverSegLib_PYTHON_RESOURCES}"]
    # ... and there LiverSegLib finds Resources/ as its parent's sibling, as in this repository
    from LiverSegLib._paths import resources_dir

    assert resources_dir() == ROOT / "Resources"


def test_cmake_globs_cover_every_file_of_the_library():
    scripts = _glob_files(_globs("LiverSegLib_PYTHON_SCRIPTS"))
    resources = _glob_files(_globs("LiverSegLib_PYTHON_RESOURCES"))
    library = [p for p in (ROOT / "LiverSegLib").rglob("*") if p.is_file() and _shipped(p)]
    assert any(p.name == "py.typed" for p in library)
    not_installed = [p.relative_to(ROOT).as_posix() for p in library
                     if p not in (scripts if p.suffix == ".py" else resources)]
    assert not not_installed, f"not matched by the globs in CMakeLists.txt (not installed in Slicer): {not_installed}"
    assert all(p.suffix == ".py" for p in scripts), "a SCRIPTS glob matches a non-Python file"


def test_cmake_globs_cover_the_model_catalogue_and_weights():
    import json

    resources = _glob_files(_globs("LiverSegLib_PYTHON_RESOURCES"))
    needed = [ROOT / "Resources" / "models.schema.json"]
    catalogue = ROOT / "Resources" / "models.json"
    if catalogue.is_file():  # written with the demo weights; without it the module has no model to offer
        needed.append(catalogue)
        for model in json.loads(catalogue.read_text())["models"]:
            needed += [ROOT / "Resources" / "weights" / stage["weights"] for stage in model["stages"].values()]
            if model.get("model_card"):  # written relative to the repository root (= the install folder)
                card = model["model_card"]
                needed.append(ROOT / card if card.startswith("Resources/") else ROOT / "Resources" / card)
    absent = [p.relative_to(ROOT).as_posix() for p in needed if not p.is_file()]
    assert not absent, f"Resources/models.json names files that do not exist: {absent}"
    missing = [p.relative_to(ROOT).as_posix() for p in needed if p not in resources]
    assert not missing, f"shipped with the model but not installed by CMakeLists.txt: {missing}"


def test_module_finds_the_library_in_both_layouts(tmp_path):
    """Run LiverSeg.py's sys.path set-up for the installed layout and for a source checkout."""
    tree = ast.parse(MODULE_PY.read_text())
    setup = [s for s in tree.body if isinstance(s, ast.Assign) and ast.unparse(s.targets[0]) == "_HERE"]
    assert setup, "LiverSeg.py must compute _HERE (its folder) before importing LiverSegLib"
    start = tree.body.index(setup[0])
    loop = tree.body[start + 1]
    first_import = next(i for i, s in enumerate(tree.body) if isinstance(s, ast.ImportFrom)
                        and (s.module or "").startswith(("LiverSegLib", "LiverSegSlicer")))
    assert isinstance(loop, ast.For) and start + 1 < first_import
    code = compile(ast.Module(body=[setup[0], loop], type_ignores=[]), str(MODULE_PY), "exec")

    def sys_path_after(module_file: Path) -> list[str]:
        fake_sys = types.SimpleNamespace(path=[])
        exec(code, {"__file__": str(module_file), "pathlib": __import__("pathlib"), "sys": fake_sys})
        return fake_sys.path

    installed = tmp_path / "installed" / "qt-scripted-modules"
    (installed / "LiverSegLib").mkdir(parents=True)
    assert sys_path_after(installed / "LiverSeg.py") == [str(installed)]
    checkout = tmp_path / "checkout"
    (checkout / "LiverSeg").mkdir(parents=True)
    (checkout / "LiverSegLib").mkdir()
    assert set(sys_path_after(checkout / "LiverSeg" / "LiverSeg.py")) == {str(checkout), str(checkout / "LiverSeg")}


# ---------------------------------------------------------------------------------------------- LiverSeg.py (ast)


def _tree() -> ast.Module:
    return ast.parse(MODULE_PY.read_text(), filename=str(MODULE_PY))


def _class(name: str) -> ast.ClassDef:
    found = [n for n in _tree().body if isinstance(n, ast.ClassDef) and n.name == name]
    assert found, f"LiverSeg.py has no class {name}"
    return found[0]


def _parameter_fields() -> dict[str, ast.AnnAssign]:
    cls = _class("LiverSegParameterNode")
    assert [ast.unparse(d) for d in cls.decorator_list] == ["parameterNodeWrapper"]
    return {s.target.id: s for s in cls.body if isinstance(s, ast.AnnAssign)}


def test_module_file_is_thin_and_parses():
    lines = MODULE_PY.read_text().splitlines()
    assert len(lines) < 400, f"LiverSeg.py has {len(lines)} lines: move non-Qt code to LiverSegSlicer"
    classes = {n.name for n in _tree().body if isinstance(n, ast.ClassDef)}
    assert {"LiverSeg", "LiverSegWidget", "LiverSegParameterNode", "LiverSegTest"} <= classes


def test_module_metadata():
    init = next(f for f in _class("LiverSeg").body if isinstance(f, ast.FunctionDef) and f.name == "__init__")
    assigned = {ast.unparse(s.targets[0]): s.value for s in init.body if isinstance(s, ast.Assign)}
    assert ast.literal_eval(assigned["self.parent.title"].args[0]) == "Liver Segmentation (LiverSeg)"
    assert ast.unparse(assigned["self.parent.categories"]) == "[translate('qSlicerAbstractCoreModule', 'Segmentation')]"
    help_text = ast.literal_eval(assigned["self.parent.helpText"].args[0])
    assert "demo weights" in help_text and "not for clinical use" in help_text
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
        "lesionThreshold": "Annotated[float, WithinRange(0.0, 1.0)]",
        "show3D": "bool",
        "surfaceFormat": "Annotated[str, Choice(['STL', 'OBJ'])]",
        "surfaceFolder": "pathlib.Path",
    }
    defaults = {name: ast.literal_eval(f.value) for name, f in fields.items() if f.value is not None}
    assert defaults == {"model": "", "device": "auto", "quick": False, "lesionThreshold": 0.8, "show3D": True,
                        "surfaceFormat": "STL"}


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
    for node in ast.walk(_tree()):
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
    problems, tree = [], _tree()
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
    tree = _tree()
    assigned = {ast.unparse(s.targets[0]): s.value for s in tree.body if isinstance(s, ast.Assign)}
    requirements = ast.literal_eval(assigned["REQUIREMENTS"])
    # torch comes from the PyTorch extension; numpy, vtk and matplotlib ship with Slicer
    from_slicer = {"torch", "numpy", "vtk", "matplotlib"}
    expected = [d for d in _pyproject_dependencies() if re.match(r"[A-Za-z0-9_.-]+", d).group(0) not in from_slicer]
    assert sorted(requirements) == sorted(expected), "LiverSeg.REQUIREMENTS differs from pyproject.toml"
    for requirement, module in requirements.items():  # the import names are right (all are installed here)
        assert importlib.util.find_spec(module) is not None, f"{requirement}: no module named {module}"


def test_names_the_widget_uses_exist_in_liversegslicer():
    slicer = pytest.importorskip("slicer", reason="slicer-core is needed to import LiverSegSlicer")
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))
    import LiverSegSlicer

    tree = _tree()
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


# ---------------------------------------------------------------------------------- CMake configure (stand-in Slicer)

# A stand-in for Slicer's CMake package: the variables and macros the extension uses, recording their arguments and
# failing like slicerMacroBuildScriptedModule does when a listed file does not exist.
FAKE_USE_SLICER = r"""
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.10/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR ${Slicer_QTSCRIPTEDMODULES_LIB_DIR})
set(BUILD_TESTING ON)
function(_record kind)
  file(APPEND ${CMAKE_BINARY_DIR}/calls.txt "${kind}\n")
endfunction()
function(_check_files)
  foreach(f ${ARGN})
    if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${f})
      message(FATAL_ERROR "given nonexistent file '${f}'")
    endif()
  endforeach()
endfunction()
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MOD "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  _check_files(${MOD_SCRIPTS} ${MOD_RESOURCES})
  _record("module|${CMAKE_CURRENT_SOURCE_DIR}|${MOD_NAME}|${MOD_SCRIPTS}|${MOD_RESOURCES}|${MOD_WITH_GENERIC_TESTS}")
endmacro()
macro(ctkMacroCompilePythonScript)
  cmake_parse_arguments(LIB "NO_INSTALL_SUBDIR;GLOBAL_TARGET" "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR"
                        "SCRIPTS;RESOURCES" ${ARGN})
  _check_files(${LIB_SCRIPTS} ${LIB_RESOURCES})
  _record("library|${CMAKE_CURRENT_SOURCE_DIR}|${LIB_SCRIPTS}|${LIB_RESOURCES}|${LIB_DESTINATION_DIR}|${LIB_INSTALL_DIR}")
endmacro()
macro(slicer_add_python_unittest)
  cmake_parse_arguments(UT "" "SCRIPT" "SLICER_ARGS" ${ARGN})
  _record("unittest|${CMAKE_CURRENT_SOURCE_DIR}|${UT_SCRIPT}")
endmacro()
"""


@pytest.mark.skipif(not (shutil.which("cmake") and shutil.which("c++")), reason="needs cmake and a C++ compiler")
def test_cmake_configures_with_a_stand_in_slicer(tmp_path):
    fake = tmp_path / "Slicer"
    fake.mkdir()
    (fake / "UseSlicer.cmake").write_text(FAKE_USE_SLICER)
    (fake / "Empty.cmake").write_text("")
    (fake / "SlicerConfig.cmake").write_text(
        "set(Slicer_VERSION 5.10.0)\n"
        "set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake)\n"
        "set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/Empty.cmake)\n"
        "set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/Empty.cmake)\n")
    build = tmp_path / "build"
    proc = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), f"-DSlicer_DIR={fake}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    calls = [line.split("|") for line in (build / "calls.txt").read_text().splitlines()]
    module = next(c for c in calls if c[0] == "module")
    assert module[1:3] == [str(MODULE_DIR), "LiverSeg"] and module[-1] == "TRUE"
    assert set(module[3].split(";")) == set(_module_lists()[0])
    assert ["unittest", str(MODULE_DIR), "LiverSeg.py"] in calls
    library = next(c for c in calls if c[0] == "library")
    assert library[1] == str(ROOT) and library[4:] == ["/".join([str(build), "lib/Slicer-5.10/qt-scripted-modules"]),
                                                         "lib/Slicer-5.10/qt-scripted-modules"]
    python = {p.relative_to(ROOT).as_posix() for p in (ROOT / "LiverSegLib").rglob("*.py") if _shipped(p)}
    assert set(library[2].split(";")) == python
    assert {"LiverSegLib/py.typed", "Resources/models.schema.json"} <= set(library[3].split(";"))
