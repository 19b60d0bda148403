"""A :class:`ModelConfig` built from one self-describing checkpoint (``liverseg segment --model-file``)."""

from __future__ import annotations

from pathlib import Path

from LiverSegLib.config import ModelConfig, StageConfig
from LiverSegLib.errors import ModelError
from LiverSegLib.weights import load_checkpoint, sha256_file

__all__ = ["model_from_checkpoint"]


def model_from_checkpoint(path: str | Path) -> ModelConfig:
    """Describe a single-network model from its checkpoint's own ``config``.

    The checkpoint is loaded once here (``weights_only=True``) to read its description; its sha256 becomes the
    expected checksum, so the file cannot change between this call and the weights being loaded.
    """
    path = Path(path).expanduser().resolve()
    digest = sha256_file(path) if path.is_file() else ""
    ckpt = load_checkpoint(path, digest or None)
    cfg = ckpt["config"]
    try:
        stage = StageConfig.from_dict({**cfg, "weights": str(path), "sha256": digest})
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelError(f"checkpoint {path.name} has an incomplete config ({type(exc).__name__}: {exc})") from None
    meta = ckpt.get("metadata", {})
    return ModelConfig(
        id=str(meta.get("id", path.stem)),
        version=str(meta.get("version", digest[:12])),
        title=f"checkpoint {path.name}",
        coarse=stage,
        fine=stage if stage.has_lesion else None,
        description=f"single network loaded from {path}",
        weights_dir=str(path.parent),
    )
