"""Add a trained checkpoint to the user's model catalogue (``liverseg models import CKPT --id ID``).

The checkpoint is loaded safely (``weights_only=True``) to read its own description, copied into
``$LIVERSEG_HOME/weights/ID-<first 12 hex digits of its sha256>.pt`` and listed in ``$LIVERSEG_HOME/models.json``
with its sha256, so ``liverseg segment --model ID`` and the Slicer module can use it like a shipped model. Both files
appear atomically, and the catalogue is validated against the schema before it replaces the old one.

Weight files are named by their content, so re-importing an id (``--overwrite``) never changes a file that a
catalogue lists: a process that read the old catalogue still finds the old weights, with their checksum, until the
import after next removes them (the previous file of the id is kept for such readers; older ones are deleted).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from LiverSegLib._paths import home_dir, resources_dir
from LiverSegLib.config import CascadeConfig, ModelConfig, default_labels
from LiverSegLib.errors import InputError, ModelError
from LiverSegLib.weights import load_checkpoint, sha256_file

__all__ = ["import_checkpoint"]

_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def import_checkpoint(path: str | Path, model_id: str, overwrite: bool = False, title: str | None = None,
                      home: Path | None = None) -> dict[str, Any]:
    """Copy a self-describing checkpoint into the user's catalogue.

    Args:
        path: a LiverSeg checkpoint (e.g. ``model.pt`` from ``liverseg train``).
        model_id: the id to list it under (lower case letters, digits, ``.``, ``_``, ``-``).
        overwrite: replace a user model with the same id (a shipped id can never be replaced).
        title: a title for ``liverseg models list`` (default: built from the checkpoint).
        home: the LiverSeg home folder (default ``$LIVERSEG_HOME`` or ``~/.liverseg``).

    Returns:
        The catalogue entry written.

    Raises:
        InputError: a bad id, an id already taken, or a checkpoint that is not a safe, complete LiverSeg checkpoint
            (a :class:`ModelError` when it needs pickle, is truncated, names an unknown network class or its weights
            do not fit its network).
    """
    import torch

    from LiverSegLib.pipeline.checkpoint_model import model_from_checkpoint
    from LiverSegLib.pipeline.stage import StageModel
    from LiverSegLib.registry import Registry

    if not _ID.match(model_id):
        raise InputError(f"model id {model_id!r} must be lower case letters, digits, '.', '_' or '-'")
    shipped = Registry([resources_dir() / "models.json"])
    if model_id in shipped.ids():
        raise InputError(f"model id {model_id!r} is a shipped model; choose another id")
    src = Path(path).expanduser().resolve()
    model = model_from_checkpoint(src)  # refuses unsafe or incomplete files with a one-line ModelError
    try:  # build its network and load its weights once: an unknown network class or misfit weights stay out
        StageModel(model.coarse, src, torch.device("cpu"))
    except ModelError as exc:
        raise ModelError(f"cannot import {src.name}: {exc}") from None
    meta = load_checkpoint(src, model.coarse.sha256).get("metadata", {})
    home = Path(home) if home is not None else home_dir()
    catalogue = home / "models.json"
    weights = home / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    with _locked(home / ".models.lock"):
        data = json.loads(catalogue.read_text()) if catalogue.is_file() else {"format_version": 1, "models": []}
        taken = [m for m in data.get("models", []) if m.get("id") == model_id]
        if taken and not overwrite:
            raise InputError(f"model id {model_id!r} is already in {catalogue}; choose another id or pass "
                             "--overwrite")
        dest = weights / f"{model_id}-{model.coarse.sha256[:12]}.pt"
        # the file the catalogue lists now for this id: readers holding the current catalogue may still open it
        previous = {s.get("weights") for m in taken if isinstance(m.get("stages"), dict)
                    for s in m["stages"].values() if isinstance(s, dict)}
        fd, tmp = tempfile.mkstemp(dir=weights, prefix=f".{model_id}.", suffix=".tmp")
        os.close(fd)
        try:
            shutil.copyfile(src, tmp)
            digest = sha256_file(tmp)
            if digest != model.coarse.sha256:
                raise InputError(f"{src.name} changed while it was being imported; try again")
            entry = _entry(model, meta, model_id, title, src, dest.name)
            data["models"] = [m for m in data.get("models", []) if m.get("id") != model_id] + [entry]
            data["default"] = data.get("default") if data.get("default") in {m["id"] for m in data["models"]} \
                else model_id
            staged = _stage_validated(catalogue, data)
            try:  # weights first: a reader never finds a listed model without its file
                os.replace(tmp, dest)
                os.replace(staged, catalogue)
            finally:
                if os.path.exists(staged):
                    os.unlink(staged)
            listed = {s.get("weights") for m in data["models"] for s in m.get("stages", {}).values()}
            _remove_stale_weights(weights, model_id, keep=listed | previous)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return entry


def _remove_stale_weights(weights: Path, model_id: str, keep: set) -> None:
    """Delete the weight files of ``model_id`` (``ID.pt``, ``ID-<sha12>.pt``) that no catalogue entry lists and that
    are not in ``keep``; a file that cannot be deleted now is left for a later import."""
    pattern = re.compile(rf"^{re.escape(model_id)}(-[0-9a-f]{{12}})?\.pt$")
    for path in weights.iterdir():
        if pattern.match(path.name) and path.name not in keep:
            with contextlib.suppress(OSError):
                path.unlink()


def _entry(model, meta: dict, model_id: str, title: str | None, src: Path, weights_name: str) -> dict[str, Any]:
    from dataclasses import replace

    stage = replace(model.coarse, weights=weights_name)
    cases = meta.get("train_cases") or []
    return ModelConfig(
        id=model_id, version=str(meta.get("version", stage.sha256[:12])),
        title=title or f"{stage.network.name} imported from {src.name}",
        description=f"imported with 'liverseg models import' from {src}", licence="user-supplied",
        training_data=str(meta.get("data", "unknown")) + (f" ({len(cases)} cases)" if cases else ""),
        labels=tuple(lb for lb in default_labels() if lb.value in stage.classes),
        coarse=stage, fine=stage if stage.has_lesion else None, cascade=CascadeConfig(),
        accuracy={"validation": meta["best"]} if isinstance(meta.get("best"), dict) else {},
    ).to_dict()


def _stage_validated(catalogue: Path, data: dict[str, Any]) -> str:
    """Write the catalogue to a temporary file beside it and check it as the registry will read it.

    Returns:
        The temporary file, to be moved over the catalogue (same file system: an atomic replace).
    """
    from LiverSegLib.registry import Registry

    fd, tmp = tempfile.mkstemp(dir=catalogue.parent, prefix=".models.", suffix=".json")
    os.close(fd)
    try:
        Path(tmp).write_text(json.dumps(data, indent=2, default=float) + "\n")
        Registry([resources_dir() / "models.json", Path(tmp)])
    except ModelError as exc:
        os.unlink(tmp)
        raise InputError(f"the catalogue entry would be invalid: {exc}") from None
    return tmp


@contextlib.contextmanager
def _locked(lock_path: Path):
    """An exclusive lock on POSIX (two imports at once must not lose an entry); nothing elsewhere."""
    try:
        import fcntl
    except ImportError:  # Windows: imports are rare and interactive
        yield
        return
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
