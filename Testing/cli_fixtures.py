"""Shared helpers of the ``liverseg segment`` tests (test_cli_segment.py, test_cli_bad_input.py).

The shipped model may not exist while these run, so every run uses ``--model-file`` with a tiny
``HanResUNet2p5D`` whose random weights are calibrated (head biases only) so that it labels about a third of a
phantom as liver: the output depends on the image content and position, which is what the geometry and
orientation tests need.

The expensive things are plain functions here; each test module wraps them in its own module-scoped fixtures, so
that the tiny checkpoint is made at most once per module.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from LiverSegLib.data.phantoms import make_phantom
from LiverSegLib.io import read_volume, write_volume
from LiverSegLib.networks import HanResUNet2p5D
from LiverSegLib.pipeline.stage import normalize_hu
from LiverSegLib.types import Volume
from LiverSegLib.weights import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
SHAPE = (16, 64, 64)  # (k, j, i): 102 x 102 mm in-plane, enough for the pipeline's size check
SPACING = (1.6, 1.6, 2.5)
HU_WINDOW = (-160.0, 240.0)
MODEL_ID = "cli-test-tiny"
NET_KWARGS = {"in_channels": 5, "out_channels": 3, "features": [4, 8, 16]}
RAS_LIKE = np.diag([-1.0, -1.0, 1.0])  # how NIfTI files are usually stored


def run_cli(*args: str | os.PathLike, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m LiverSegLib segment ARGS`` in a subprocess, from the repository root."""
    return subprocess.run([sys.executable, "-m", "LiverSegLib", "segment", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env=env)


def _calibrated_net(ct: Volume) -> HanResUNet2p5D:
    """A random tiny net whose head biases are set so that ~30 % of ``ct`` is foreground, some of it lesion."""
    torch.manual_seed(0)
    net = HanResUNet2p5D(**NET_KWARGS).eval()
    x = normalize_hu(ct.array_zyx.astype(np.float32), HU_WINDOW)
    nz = x.shape[0]
    stacks = torch.from_numpy(x[np.clip(np.arange(nz)[:, None] + np.arange(-2, 3)[None], 0, nz - 1)])
    head = net.head.conv
    with torch.no_grad():
        head.weight.mul_(40.0)  # sharp probabilities: lesion components whose max probability passes a threshold
        head.bias.mul_(40.0)
        logits = net(stacks)
        head.bias[2] -= torch.quantile((logits[:, 2] - logits[:, 1]).flatten(), 0.9)
        logits = net(stacks)
        head.bias[0] -= torch.quantile((logits[:, 0] - torch.logsumexp(logits[:, 1:], 1)).flatten(), 0.3)
    return net


def make_tiny_checkpoint(folder: Path) -> Path:
    """``folder/tiny.pt``: the calibrated tiny net as a LiverSeg checkpoint with id :data:`MODEL_ID`."""
    ct, _ = make_phantom(SHAPE, SPACING, seed=3)
    path = folder / "tiny.pt"
    config = {"network": {"name": "HanResUNet2p5D", "kwargs": NET_KWARGS}, "classes": [0, 1, 2],
              "preprocessing": {"hu_window": list(HU_WINDOW), "spacing_xyz": [None, None, None],
                                "context_slices": 5}}
    save_checkpoint(path, config, _calibrated_net(ct).state_dict(), metadata={"id": MODEL_ID, "version": "1"})
    return path


def cli_env(home: Path) -> dict[str, str]:
    """The environment of a CLI child: a private LIVERSEG_HOME so that no user catalogue or cache of this machine
    takes part."""
    # One torch thread: on a small, busy machine several threads spin against each other (10x slower here).
    return {**os.environ, "LIVERSEG_HOME": str(home), "OMP_NUM_THREADS": "1"}


def write_nifti_ct(folder: Path) -> tuple[Path, Volume]:
    """A phantom stored RAS-like (direction diag(-1, -1, 1)) with an off-centre origin, as ``folder/ct.nii.gz``;
    the path and the volume as read back."""
    ct, _ = make_phantom(SHAPE, SPACING, seed=5, direction=RAS_LIKE, origin_xyz=(71.3, 48.2, -310.5))
    path = write_volume(ct, folder / "ct.nii.gz")
    return path, read_volume(path)


def file_tree(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``root`` with its mtime and bytes (to prove that nothing was written or touched)."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*"))
            if p.is_file()} | {str(p.relative_to(root)) + "/": (0, b"") for p in root.rglob("*") if p.is_dir()}


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    """Exit code 2, no traceback and one ``liverseg: error: ...`` line on stderr holding every word; that line."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"stderr should be one line, got {proc.stderr!r}"
    assert lines[0].startswith("liverseg: error: "), lines[0]
    for word in words:
        assert word.lower() in lines[0].lower(), f"{word!r} not in {lines[0]!r}"
    return lines[0]
