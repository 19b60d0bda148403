"""The Segment button's child process in a Python that has only what a fresh 3D Slicer 5.10 has (issue 10).

A fresh Slicer bundles numpy, scipy, pydicom, pillow, requests, GitPython, packaging and VTK; LiverSeg installs
``Resources/requirements.txt`` on first use. The child is started by the real :class:`SubprocessRunner` with an
import blocker (``import_blocker.py`` as ``sitecustomize``) that refuses every other module LiverSeg's own code
asks for, so a dependency missing from the requirements file fails here instead of in a user's Slicer.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

slicer_fixtures = pytest.importorskip("slicer_fixtures")  # puts LiverSeg/ on sys.path; skips without slicer-core

from LiverSegSlicer import LiverSegLogic, SubprocessRunner  # noqa: E402
from LiverSegSlicer.dependencies import readRequirements  # noqa: E402

from LiverSegLib.data.samples import fetch_source  # noqa: E402

#: Distributions Slicer 5.10 ships with its Python (besides the standard library, pip and setuptools).
SLICER_BUNDLED = ("numpy", "scipy", "pydicom", "pillow", "requests", "GitPython", "packaging", "vtk", "pip",
                  "setuptools")
REAL_CT = ("totalsegmentator", "tests/reference_files/example_ct.nii.gz")


def _closure(names: list[str]) -> set[str]:
    """These distributions and everything they require (installed here), as lower-case names. Slicer's VTK is
    built with Slicer, not the pip wheel, whose dependency on matplotlib it does not have."""
    seen: set[str] = set()
    todo = [n.lower() for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        if name == "vtk":
            continue
        for spec in requires:
            if "extra ==" in spec:  # optional extras are not installed by pip for the requirement
                continue
            todo.append(re.match(r"[A-Za-z0-9_.\-]+", spec).group(0).lower())
    return seen


def allowed_modules() -> list[str]:
    """Top-level import names of Slicer's bundled packages, the requirements file and their dependencies."""
    wanted = _closure([*SLICER_BUNDLED, *(r.name for r in readRequirements())])
    norm = lambda n: re.sub(r"[-_.]+", "-", n.lower())  # noqa: E731 - distribution names compare normalised
    wanted = {norm(n) for n in wanted}
    return sorted(module for module, dists in metadata.packages_distributions().items()
                  if any(norm(d) in wanted for d in dists))


@pytest.fixture(scope="module")
def slicer_like_env(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("slicer_python")
    shutil.copy(Path(__file__).with_name("import_blocker.py"), folder / "sitecustomize.py")
    allowed = allowed_modules()
    assert "monai" in allowed and "vtkmodules" in allowed and "matplotlib" not in allowed
    return {**slicer_fixtures.subprocess_env(tmp_path_factory.mktemp("home")), "PYTHONPATH": str(folder),
            "LIVERSEG_ALLOWED_IMPORTS": ",".join(allowed)}


def _python(env: dict[str, str], code: str) -> subprocess.CompletedProcess:
    import os

    root = Path(__file__).resolve().parents[1]
    full = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([env["PYTHONPATH"], str(root)])}
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=120)


def test_the_blocker_refuses_what_slicer_lacks(slicer_like_env):
    """The check can fail: the overview picture needs matplotlib, which Slicer does not ship."""
    refused = _python(slicer_like_env, "import LiverSegLib.outputs.overview")
    assert refused.returncode != 0
    assert "No module named 'matplotlib' (3D Slicer 5.10 does not ship it" in refused.stderr
    # the writer itself imports it only when it draws the picture; monai's optional matplotlib import copes
    allowed = _python(slicer_like_env, "import LiverSegLib.outputs.writer, monai, LiverSegLib.runs.subprocess_runner")
    assert allowed.returncode == 0, allowed.stderr


def test_segment_button_child_runs_on_a_real_ct_with_slicers_packages_only(slicer_like_env):
    volume_path = fetch_source(REAL_CT[0]) / REAL_CT[1]
    scene = slicer_fixtures.slicer.vtkMRMLScene()
    node = slicer_fixtures.load_volume_node(scene, volume_path, "example_ct")
    logs: list[str] = []
    logic = LiverSegLogic(scene, SubprocessRunner(env=slicer_like_env, log=logs.append))
    seg = logic.process(node, device="cpu", quick=True)  # the shipped default model, as the button runs it
    segmentation = seg.GetSegmentation()
    liver = segmentation.GetSegmentIdBySegmentName("Liver")
    assert liver and "SCT^10200004^Liver" in segmentation.GetSegment(liver).GetTerminology()
    assert 500.0 < logic.lastResult.liver_volume_ml < 4500.0, logic.lastResult.liver_volume_ml
    assert not any("No module named" in line for line in logs), logs
