"""The Python packages LiverSeg needs inside Slicer: read from ``Resources/requirements.txt``, checked with
their versions (Qt-free; the widget asks the user and installs).

torch is special: it comes from Slicer's PyTorch extension (``PyTorchUtils`` picks the build for the GPU driver),
and an installed torch older than the minimum is reported, not silently used.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

__all__ = ["Requirement", "readRequirements", "missingRequirements", "torchProblem", "requirementsFile",
           "ensureDependencies"]

try:  # Slicer's translation function; the headless slicer-core has none
    from slicer.i18n import tr as _
except ImportError:
    def _(text: str) -> str:
        return text


@dataclass(frozen=True)
class Requirement:
    """One line of the requirements file: ``spec`` as pip takes it, the ``module`` it provides, ``via`` (e.g.
    "PyTorchUtils") where pip is not the installer."""

    spec: str
    module: str
    via: str = ""

    @property
    def name(self) -> str:
        return re.match(r"[A-Za-z0-9_.\-]+", self.spec).group(0)

    @property
    def minimum(self) -> str | None:
        found = re.search(r">=\s*([0-9][0-9A-Za-z.]*)", self.spec)
        return found.group(1) if found else None


def requirementsFile() -> Path:
    """``Resources/requirements.txt`` beside LiverSegLib (source checkout or installed extension)."""
    from LiverSegLib._paths import resources_dir

    return resources_dir() / "requirements.txt"


def readRequirements(path: str | Path | None = None) -> list[Requirement]:
    """The requirements, in file order (comments and blank lines skipped)."""
    out = []
    for raw in Path(path or requirementsFile()).read_text(encoding="utf-8").splitlines():
        spec, _, comment = raw.partition("#")
        spec = spec.strip()
        if not spec:
            continue
        module = re.search(r"import:\s*(\S+)", comment)
        via = re.search(r"via:\s*(\S+)", comment)
        name = re.match(r"[A-Za-z0-9_.\-]+", spec).group(0)
        out.append(Requirement(spec, module.group(1) if module else name, via.group(1) if via else ""))
    return out


def _versionTuple(text: str) -> tuple[int, ...]:
    """(2, 13, 0) for "2.13.0+cpu": enough to compare against a minimum like "2.2"."""
    return tuple(int(p) for p in re.findall(r"\d+", text.split("+")[0])[:3])


def _installedVersion(requirement: Requirement) -> str | None:
    try:
        return metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
        return None


def _satisfied(requirement: Requirement) -> bool:
    if importlib.util.find_spec(requirement.module) is None:
        return False
    version, minimum = _installedVersion(requirement), requirement.minimum
    return minimum is None or version is None or _versionTuple(version) >= _versionTuple(minimum)


def missingRequirements(requirements: list[Requirement] | None = None) -> list[str]:
    """Pip requirement strings that are not installed or older than their minimum (torch excluded: see
    :func:`torchProblem`)."""
    return [r.spec for r in (requirements or readRequirements()) if not r.via and not _satisfied(r)]


def torchProblem(requirements: list[Requirement] | None = None) -> str | None:
    """``None`` when an installed torch meets the minimum; otherwise one line saying what is wrong."""
    listed = [r for r in (requirements or readRequirements()) if r.module == "torch"]
    torch = listed[0] if listed else Requirement("torch", "torch")
    if importlib.util.find_spec("torch") is None:
        return "PyTorch is not installed"
    version = _installedVersion(torch)
    if version is not None and torch.minimum and _versionTuple(version) < _versionTuple(torch.minimum):
        return f"PyTorch {version} is older than the {torch.minimum} LiverSeg needs"
    return None


def ensureDependencies(ask: bool = True, status: Callable[[str], None] | None = None) -> bool:
    """Make the packages of ``Resources/requirements.txt`` importable inside Slicer: torch (at least its minimum
    version) through the PyTorch extension, the others with ``slicer.packaging.pip_ensure`` where it exists (Slicer
    5.12+) and ``slicer.util.pip_install`` on 5.10.

    Args:
        ask: confirm with the user first (dialogs); False installs without asking (the self-test).
        status: called with a one-line status while installing.

    Returns:
        False when the user said no; True when everything is importable.

    Raises:
        RuntimeError: with a one-line reason (no PyTorch extension, no connection, a restart is needed).
    """
    import slicer

    requirements = readRequirements()
    problem = torchProblem(requirements)
    if problem is not None:
        if importlib.util.find_spec("PyTorchUtils") is None:
            raise RuntimeError(_("LiverSeg needs PyTorch ({problem}): install the PyTorch extension with the "
                                 "Extensions Manager, restart Slicer and try again.").format(problem=problem))
        import PyTorchUtils

        if status is not None:
            status(_("Installing PyTorch (this can take several minutes)..."))
        [torchRequirement] = [r for r in requirements if r.name == "torch"]
        if PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=ask, torchVersionRequirement=f">={torchRequirement.minimum}") is None:
            return False
        problem = torchProblem(requirements)
        if problem is not None:  # an older torch was already imported in this session
            raise RuntimeError(_("{problem}: restart Slicer to use the PyTorch just installed.").format(
                problem=problem))
    pipRequirements = [r.spec for r in requirements if not r.via]
    missing = missingRequirements(requirements)
    if not missing:
        return True
    try:
        if importlib.util.find_spec("slicer.packaging") is not None:  # Slicer 5.12+: checks versions too
            from packaging.requirements import Requirement
            from slicer.packaging import pip_ensure

            try:  # asks the user, installs with a progress dialog, offers a restart when needed
                pip_ensure([Requirement(r) for r in pipRequirements], requester="LiverSeg")
            except RuntimeError:  # the user declined
                return False
            return True
        if ask and not slicer.util.confirmOkCancelDisplay(
                _("LiverSeg needs these Python packages; install them now (internet connection needed, a few "
                  "minutes)?\n\n{packages}").format(packages="\n".join(missing)),
                _("LiverSeg: install Python packages")):
            return False
        with slicer.util.WaitCursor():
            slicer.util.pip_install(missing)
    except Exception as exc:  # e.g. subprocess.CalledProcessError: pip could not reach the package index
        command = "PythonSlicer -m pip install " + " ".join(shlex.quote(r) for r in missing)
        raise RuntimeError(_("Could not install {packages}: no connection to the package index? Install them "
                             "manually with:\n{command}").format(packages=", ".join(missing),
                                                                 command=command)) from exc
    return True
