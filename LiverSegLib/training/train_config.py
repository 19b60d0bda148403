"""Training configurations: one JSON file per recipe (``Resources/configs/*.json``), overridable per run.

A recipe is data, not a subclass: the network, its preprocessing, the sampler, the loss, the optimiser, the schedule
and (for DI2IN-AN) the adversarial phase are all named here, and :class:`~LiverSegLib.training.trainer.Trainer` runs
any of them. ``liverseg train CONFIG`` takes a config name (``cascade_coarse``, ``cascade_fine``, ``di2in``,
``di2in_an``, ``mixed_unet``) or a path to a JSON file, plus ``--set key.path=value`` overrides.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from LiverSegLib._paths import resources_dir
from LiverSegLib.config import StageConfig
from LiverSegLib.errors import InputError, ModelError

__all__ = ["TrainConfig", "config_names", "load_train_config", "apply_overrides"]

_REQUIRED = ("name", "stage", "sampler", "loss", "optimizer", "steps")
_SAMPLERS = ("slices", "volumes")


def _check_schema(raw: dict[str, Any], source: str) -> None:
    """The first problem of ``raw`` against the recipe schema, as one line naming where it is."""
    import jsonschema  # local: only needed when a recipe is read

    schema = json.loads((resources_dir() / "train_recipe.schema.json").read_text(encoding="utf-8"))
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(raw))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "top level"
        raise InputError(f"{source}: {where}: {' '.join(error.message.split())}")


def configs_dir() -> Path:
    return resources_dir() / "configs"


def config_names() -> list[str]:
    """Names of the shipped recipes."""
    return sorted(p.stem for p in configs_dir().glob("*.json"))


@dataclass(frozen=True)
class TrainConfig:
    """A validated training recipe.

    Attributes:
        raw: the JSON dict (after overrides); every other attribute is read from it.
        stage: the stage the trained network will serve (network, classes, preprocessing), as inference sees it.
    """

    raw: dict[str, Any]
    stage: StageConfig

    @property
    def name(self) -> str:
        return str(self.raw["name"])

    def section(self, key: str) -> dict[str, Any]:
        """A sub-dict of the recipe (empty when absent or null)."""
        return dict(self.raw.get(key) or {})

    @property
    def steps(self) -> int:
        return int(self.raw["steps"])

    @property
    def seed(self) -> int:
        return int(self.raw.get("seed", 0))

    @property
    def validate_every(self) -> int:
        return int(self.raw.get("validate_every", max(1, self.steps // 10)))

    @property
    def adversarial(self) -> dict[str, Any] | None:
        return dict(self.raw["adversarial"]) if self.raw.get("adversarial") else None

    @property
    def num_classes(self) -> int:
        return len(self.stage.classes)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> TrainConfig:
        """Validate a recipe against ``Resources/train_recipe.schema.json`` and the code that will use it; every
        problem is a one-line :class:`InputError` naming the key (a misspelt key is an error, not a default)."""
        missing = [k for k in _REQUIRED if k not in raw]
        if missing:
            raise InputError(f"{source} lacks {', '.join(missing)}")
        _check_schema(raw, source)
        st = raw["stage"]
        try:
            stage = StageConfig.from_dict({**st, "weights": "", "sha256": ""})
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{source}: stage is incomplete ({type(exc).__name__}: {exc})") from None
        except ModelError as exc:
            raise InputError(f"{source}: stage: {exc}") from None
        if tuple(stage.classes) not in ((0, 1), (0, 1, 2)):
            raise InputError(f"{source}: stage.classes must be [0, 1] (liver) or [0, 1, 2] (liver, lesion), "
                             f"got {list(stage.classes)}")
        kind = raw["sampler"].get("kind")
        if kind not in _SAMPLERS:
            raise InputError(f"{source}: sampler.kind must be one of {', '.join(_SAMPLERS)}, got {kind!r}")
        for key in ("steps", "validate_every"):
            if key in raw and (not isinstance(raw[key], int) or raw[key] < 0):
                raise InputError(f"{source}: {key} must be a non-negative integer, got {raw[key]!r}")
        adv = raw.get("adversarial")
        if adv:
            for key in ("lambda", "k_d", "k_g", "batch_d", "batch_g", "iterations", "discriminator"):
                if key not in adv:
                    raise InputError(f"{source}: adversarial lacks {key}")
        from LiverSegLib.networks import NETWORKS

        if stage.network.name not in NETWORKS:
            raise InputError(f"{source}: unknown network {stage.network.name!r} (known: {', '.join(sorted(NETWORKS))})")
        from LiverSegLib.training.losses import build_loss

        try:  # the loss's own options (the schema leaves them to it): an unknown one is named here, not at step 1
            build_loss(dict(raw["loss"]), len(stage.classes))
        except ValueError as exc:
            raise InputError(f"{source}: loss: {' '.join(str(exc).split())}") from None
        return cls(raw=raw, stage=stage)

    def to_json(self) -> str:
        return json.dumps(self.raw, indent=2)


def load_train_config(name_or_path: str, overrides: list[str] | None = None) -> TrainConfig:
    """A shipped recipe by name or a JSON file by path, with ``key.path=value`` overrides applied."""
    path = Path(name_or_path).expanduser()
    if not path.suffix and not path.exists():
        path = configs_dir() / f"{name_or_path}.json"
        if not path.is_file():
            raise InputError(f"unknown training config {name_or_path!r}: use one of {', '.join(config_names())} "
                             "or a path to a JSON file")
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"training config not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"training config {path} is not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise InputError(f"training config {path} must hold a JSON object")
    raw = apply_overrides(raw, overrides or [])
    return TrainConfig.from_dict(raw, source=f"training config {path.name}")


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``a.b.c=VALUE`` assignments applied (VALUE is JSON, else a plain string).

    Example: ``stage.network.kwargs.features=[4,8,16,32,64]``, ``sampler.batch=2``, ``adversarial=null``.
    """
    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise InputError(f"override {item!r} must look like key.path=value")
        key, text = item.split("=", 1)
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                if part in node and node[part] is not None:
                    raise InputError(f"override {key!r}: {part!r} is not a section")
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return out
