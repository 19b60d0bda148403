"""Static checks of the Slicer extension's CMake files, and a configure run against a stand-in Slicer.

No Slicer application is available here, so what would break a Slicer build is checked by reading the files: every
file the CMake lists exists and every file that must ship is listed (or matched by a glob the CMake uses); the library
lands beside the module where ``LiverSegLib`` looks for ``Resources``, and ``LiverSeg.py`` finds it there and in a
source checkout. Where cmake is installed, the extension is also configured against a stand-in Slicer CMake package
that records what the Slicer macros receive. The module's .ui, parameter node and strings: test_extension_module.py.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import types
from pathlib import Path

import pytest
from extension_sources import MODULE_DIR, MODULE_PY, ROOT, module_class

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
    test_class = module_class("LiverSegTest")
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
            # the ONNX exports too: on the CPU the predictor runs them (OpenVINO) whenever the entry names one
            needed += [ROOT / "Resources" / "weights" / stage["onnx"]["file"] for stage in model["stages"].values()
                       if stage.get("onnx")]
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
