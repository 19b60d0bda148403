"""Safe checkpoint files: sha256-verified, self-describing, loaded without pickle.

A LiverSeg checkpoint is a ``torch.save`` of a plain dict::

    {"format": "liverseg-checkpoint", "format_version": 1,
     "config": {...stage config: network, classes, preprocessing...},
     "state_dict": {name: tensor}, "metadata": {...}}

It is always read with ``torch.load(..., weights_only=True)``: a file that needs pickle (and could therefore
run code while loading) is refused, never loaded.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from LiverSegLib.errors import ModelError

__all__ = ["CHECKPOINT_FORMAT", "sha256_file", "verify_sha256", "read_verified", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "liverseg-checkpoint"
_ZIP_MAGIC = b"PK\x03\x04"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_digest(path: Path, actual: str, expected: str) -> None:
    if actual.lower() != expected.lower():
        raise ModelError(
            f"model file {path.name} fails its checksum (expected sha256 {expected[:12]}..., got {actual[:12]}...); "
            "it is corrupt or was replaced: reinstall it"
        )


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise ModelError(f"model file not found: {path} (run 'liverseg models verify' to check the installation)")


def verify_sha256(path: str | os.PathLike, expected: str) -> None:
    """Raise :class:`ModelError` unless ``path`` exists and has the expected sha256."""
    path = Path(path)
    _check_exists(path)
    _check_digest(path, sha256_file(path), expected)


def read_verified(path: str | os.PathLike, expected: str) -> bytes:
    """A model file's bytes, refused (:class:`ModelError`) unless their sha256 is ``expected``: hashed on the very
    bytes that are returned, so the file cannot change between the check and the load."""
    path = Path(path)
    _check_exists(path)
    data = path.read_bytes()
    _check_digest(path, hashlib.sha256(data).hexdigest(), expected)
    return data


def load_checkpoint(path: str | os.PathLike, expected_sha256: str | None = None) -> dict[str, Any]:
    """Load a LiverSeg checkpoint safely.

    Args:
        path: the checkpoint file.
        expected_sha256: when given, the file is refused unless its sha256 matches (checked before loading).

    Returns:
        The checkpoint dict with float32 tensors in ``state_dict``.

    Raises:
        ModelError: missing file, checksum mismatch, empty, truncated or non-torch file, a file that needs pickle,
            or a dict that is not a LiverSeg checkpoint.
    """
    path = Path(path)
    if expected_sha256 is not None:
        verify_sha256(path, expected_sha256)
    elif not path.is_file():
        raise ModelError(f"model file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    # A torch file is a zip archive (torch >= 1.6) or a legacy pickle stream (protocol opcode 0x80) with tensors.
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(b"\x80")):
        what = "is empty" if not head else "is not a torch checkpoint (unknown file type)"
        raise ModelError(f"model file {path.name} {what}; reinstall it or name a LiverSeg checkpoint")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols; the refusal below says it all
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" in str(exc).lower():
            # weights_only refuses any global it does not know: the file wants to run code or build custom objects.
            raise ModelError(
                f"model file {path.name} needs pickle to load (it could run code); refused. "
                "Only LiverSeg checkpoints holding plain tensors and settings are accepted"
            ) from None
        # an opcode the safe unpickler does not support: a damaged stream (or one built by hand)
        raise ModelError(
            f"model file {path.name} is corrupt or holds more than tensors and settings (it cannot be read "
            "without full pickle); refused"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a corrupt file can fail in many ways inside torch.load
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"model file {path.name} is truncated or not a torch checkpoint ({first[:120]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{path.name} is not a LiverSeg checkpoint (no 'format': '{CHECKPOINT_FORMAT}' entry)")
    if not isinstance(ckpt.get("config"), dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ModelError(f"{path.name} lacks its 'config' or 'state_dict' entry")
    if not isinstance(ckpt.setdefault("metadata", {}), dict):
        raise ModelError(f"{path.name} has a 'metadata' entry that is not a dict")
    bad = [str(k) for k, v in ckpt["state_dict"].items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelError(f"{path.name} has state_dict entries that are not named tensors: {', '.join(bad[:5])}")
    # A few bytes can describe a huge tensor (a stride-0 view of one stored value): converting it to float32 below
    # would allocate all of it. Only dense tensors whose elements are all stored in the file are accepted.
    odd = [k for k, v in ckpt["state_dict"].items() if v.layout != torch.strided or v.device.type != "cpu"
           or v.numel() * v.element_size() > v.untyped_storage().nbytes()]
    if odd:
        raise ModelError(f"{path.name} has state_dict entries that are not plain stored tensors (sparse, meta, or "
                         f"claiming more elements than the file holds): {', '.join(odd[:5])}")
    ckpt["state_dict"] = {
        k: v.float() if torch.is_floating_point(v) else v for k, v in ckpt["state_dict"].items()
    }
    return ckpt


def save_checkpoint(
    path: str | os.PathLike,
    config: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    metadata: dict[str, Any] | None = None,
    half: bool = True,
) -> str:
    """Write a self-describing checkpoint atomically and return its sha256.

    Args:
        path: destination file.
        config: JSON-like stage description (network name/kwargs, classes, preprocessing).
        state_dict: the network's weights.
        metadata: JSON-like facts (training data, steps, metrics).
        half: store floating tensors as float16 (halves the file; inference casts back to float32).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: (v.detach().cpu().half() if half and torch.is_floating_point(v) else v.detach().cpu()).contiguous()
        for k, v in state_dict.items()
    }
    payload = {"format": CHECKPOINT_FORMAT, "format_version": 1, "config": config, "state_dict": tensors,
               "metadata": metadata or {}}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes the file private (0600); a weight file is meant to be readable
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return sha256_file(path)
