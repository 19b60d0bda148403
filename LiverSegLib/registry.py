"""The model catalogue: ``Resources/models.json`` plus the user's own (``$LIVERSEG_HOME/models.json``).

The catalogue is pure data validated against ``Resources/models.schema.json``; importing this module does
not import torch, so listing models is instant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from LiverSegLib._paths import home_dir, resources_dir
from LiverSegLib.config import ModelConfig
from LiverSegLib.errors import ModelError

__all__ = ["Registry", "load_registry"]


class Registry:
    """Models by id, with the default one.

    Args:
        catalogue_files: ``models.json`` files, later files overriding earlier ids. Weight paths in each file
            are relative to a ``weights`` folder beside that file.
    """

    def __init__(self, catalogue_files: list[Path]) -> None:
        self._models: dict[str, ModelConfig] = {}
        self._raw: dict[str, dict[str, Any]] = {}
        self.default_id: str | None = None
        schema = json.loads((resources_dir() / "models.schema.json").read_text())
        for path in catalogue_files:
            data = _read_json(path)
            _validate(data, schema, path)
            weights_dir = str(Path(path).parent / "weights")
            seen: set[str] = set()
            for i, entry in enumerate(data["models"]):
                if entry["id"] in seen:
                    raise ModelError(f"model catalogue {path} is invalid at models/{i}/id: "
                                     f"model {entry['id']!r} is listed twice")
                seen.add(entry["id"])
                try:
                    self._models[entry["id"]] = ModelConfig.from_dict(entry, weights_dir=weights_dir)
                except ModelError as exc:  # a value the schema cannot express, e.g. a decreasing HU window
                    raise ModelError(f"model catalogue {path} is invalid at models/{i} ({entry['id']}): "
                                     f"{exc}") from None
                self._raw[entry["id"]] = entry
            if data["default"] not in self._models:
                raise ModelError(f"model catalogue {path} is invalid at default: model {data['default']!r} is not "
                                 f"among its models (available: {', '.join(sorted(self._models))})")
            # The first catalogue (the shipped one) names the default; later ones add or replace models.
            self.default_id = self.default_id or data["default"]

    def ids(self) -> list[str]:
        return sorted(self._models)

    def get(self, model_id: str | None = None) -> ModelConfig:
        """The model with this id (the default one for ``None``)."""
        model_id = model_id or self.default_id
        if model_id not in self._models:
            raise ModelError(f"unknown model {model_id!r} (available: {', '.join(self.ids()) or 'none'}; "
                             "see 'liverseg models list')")
        return self._models[model_id]

    def raw(self, model_id: str) -> dict[str, Any]:
        """The catalogue entry as written in models.json."""
        self.get(model_id)
        return self._raw[model_id]

    def weight_path(self, model: ModelConfig, weights: str) -> Path:
        """Absolute path of a stage's weight file."""
        return model.weight_path(weights)


def load_registry(include_user: bool = True) -> Registry:
    """The shipped catalogue, plus the user's catalogue in ``$LIVERSEG_HOME`` when it exists."""
    files = [resources_dir() / "models.json"]
    user = home_dir() / "models.json"
    if include_user and user.is_file():
        files.append(user)
    return Registry(files)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ModelError(f"model catalogue not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"model catalogue {path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None


def _validate(data: dict[str, Any], schema: dict[str, Any], path: Path) -> None:
    import jsonschema  # local: only needed when a catalogue is read

    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(data), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ModelError(f"model catalogue {path} is invalid at {where}: {e.message}")
