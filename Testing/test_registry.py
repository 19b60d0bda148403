"""The model catalogue: schema validation with useful messages, lookups, the user's catalogue, no torch import.

Every test writes its own catalogue in a temporary folder: the shipped ``Resources/models.json`` may not exist.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import LiverSegLib.registry as registry_mod
from LiverSegLib._paths import resources_dir
from LiverSegLib.config import TERMINOLOGY
from LiverSegLib.errors import ModelError
from LiverSegLib.registry import Registry, load_registry

REPO = Path(__file__).resolve().parents[1]
SHA_A = "a" * 64
SHA_B = "0123456789abcdef" * 4


def _stage(weights: str, sha256: str, classes=(0, 1, 2), out_channels: int = 3) -> dict:
    return {
        "network": {"name": "HanResUNet2p5D",
                    "kwargs": {"in_channels": 5, "out_channels": out_channels, "features": [4, 8]}},
        "weights": weights, "sha256": sha256, "classes": list(classes),
        "preprocessing": {"hu_window": [-100, 200], "spacing_xyz": [None, None, 2.5], "context_slices": 5},
    }


def _model(model_id: str, title: str = "", fine: bool = True) -> dict:
    stages = {"coarse": _stage(f"{model_id}_coarse.pt", SHA_A, (0, 1), 2)}
    if fine:
        stages["fine"] = _stage(f"{model_id}_fine.pt", SHA_B)
    return {
        "id": model_id, "version": "1.0", "title": title or f"model {model_id}", "description": "test",
        "licence": "CC0-1.0", "training_data": "synthetic",
        "labels": [{"value": 1, "name": "Liver", "color_rgb": [0.8, 0.5, 0.4], "terminology": TERMINOLOGY["Liver"]}],
        "stages": stages,
        "cascade": {"margin_mm": [5, 5, 5], "lesion_threshold": 0.7},
    }


def _catalogue(*models: dict, default: str | None = None) -> dict:
    return {"format_version": 1, "default": default or models[0]["id"], "models": list(models)}


def _write(folder: Path, data: dict | str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "models.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=1))
    return path


# --- a valid catalogue ------------------------------------------------------------------------------------------
def test_valid_catalogue_loads(tmp_path):
    path = _write(tmp_path, _catalogue(_model("liver-small", fine=False), _model("han-demo"), default="han-demo"))
    reg = Registry([path])
    assert reg.ids() == ["han-demo", "liver-small"]
    assert reg.default_id == "han-demo"
    assert reg.get(None).id == "han-demo" and reg.get().id == "han-demo"

    small = reg.get("liver-small")
    assert small.fine is None and small.coarse.classes == (0, 1)
    assert small.coarse.network.kwargs["out_channels"] == 2
    assert small.coarse.spacing_xyz == (None, None, 2.5)
    assert small.cascade.margin_mm == (5.0, 5.0, 5.0) and small.cascade.lesion_threshold == 0.7
    assert small.labels[0].name == "Liver" and small.label_values() == {1}

    demo = reg.get("han-demo")
    assert demo.fine is not None and demo.fine.sha256 == SHA_B and demo.label_values() == {1, 2}
    assert reg.raw("han-demo")["title"] == "model han-demo"


def test_weight_paths_are_relative_to_the_catalogues_weights_folder(tmp_path):
    path = _write(tmp_path / "cat", _catalogue(_model("m")))
    reg = Registry([path])
    m = reg.get("m")
    assert reg.weight_path(m, m.coarse.weights) == tmp_path / "cat" / "weights" / "m_coarse.pt"
    absolute = tmp_path / "elsewhere" / "w.pt"
    assert reg.weight_path(m, str(absolute)) == absolute


def test_unknown_id_lists_the_available_ones(tmp_path):
    reg = Registry([_write(tmp_path, _catalogue(_model("alpha"), _model("beta")))])
    with pytest.raises(ModelError, match=r"unknown model 'gamma' \(available: alpha, beta; see 'liverseg models list'"):
        reg.get("gamma")
    with pytest.raises(ModelError, match="unknown model 'gamma'"):
        reg.raw("gamma")


# --- invalid catalogues: refused with the file and the place ----------------------------------------------------
def _broken(mutate) -> dict:
    data = _catalogue(_model("m"))
    mutate(data)
    return data


@pytest.mark.parametrize(("mutate", "where", "what"), [
    (lambda d: d["models"][0]["stages"]["fine"].update(sha256="ABC123"), "models/0/stages/fine/sha256",
     "does not match"),
    (lambda d: d["models"][0]["stages"]["coarse"].update(sha256="g" * 64), "models/0/stages/coarse/sha256",
     "does not match"),
    (lambda d: d["models"][0].pop("licence"), "models/0", "'licence' is a required property"),
    (lambda d: d["models"][0]["stages"]["coarse"].pop("weights"), "models/0/stages/coarse",
     "'weights' is a required property"),
    (lambda d: d.pop("default"), "(top level)", "'default' is a required property"),
    (lambda d: d["models"][0].update(id="Has Spaces"), "models/0/id", "does not match"),
    (lambda d: d["models"][0].update(colour="red"), "models/0", "Additional properties"),
    (lambda d: d["models"][0]["stages"]["coarse"]["preprocessing"].update(hu_window=[1]),
     "models/0/stages/coarse/preprocessing/hu_window", "too short"),
    (lambda d: d.update(format_version=2), "format_version", "1 was expected"),
    (lambda d: d.update(models=[]), "models", "should be non-empty"),
])
def test_schema_violations_name_the_file_and_the_place(tmp_path, mutate, where, what):
    path = _write(tmp_path, _broken(mutate))
    with pytest.raises(ModelError) as info:
        Registry([path])
    msg = str(info.value)
    assert f"model catalogue {path} is invalid at {where}: " in msg
    assert what in msg


def test_default_not_among_the_models(tmp_path):
    path = _write(tmp_path, _catalogue(_model("alpha"), default="omega"))
    with pytest.raises(ModelError, match=r"is invalid at default: model 'omega' is not among its models") as info:
        Registry([path])
    assert str(path) in str(info.value) and "available: alpha" in str(info.value)


def test_invalid_json(tmp_path):
    path = _write(tmp_path, '{"format_version": 1,\n "default": "m",\n "models": [,]}')
    with pytest.raises(ModelError, match=r"is not valid JSON \(line 3: ") as info:
        Registry([path])
    assert str(path) in str(info.value)


def test_missing_catalogue(tmp_path):
    with pytest.raises(ModelError, match="model catalogue not found: .*nothing.json"):
        Registry([tmp_path / "nothing.json"])


def test_values_the_schema_cannot_check_are_refused_with_the_place(tmp_path):
    path = _write(tmp_path, _broken(lambda d: d["models"][0]["stages"]["fine"]["preprocessing"].update(
        hu_window=[300, -100])))
    with pytest.raises(ModelError, match=r"invalid at models/0 \(m\): hu_window must be increasing") as info:
        Registry([path])
    assert str(path) in str(info.value)
    path = _write(tmp_path, _broken(lambda d: d["models"][0]["stages"]["coarse"].update(classes=[1, 2])))
    with pytest.raises(ModelError, match=r"invalid at models/0 \(m\): classes must list .* including 0"):
        Registry([path])


def test_cascade_guard_keys_are_optional_and_old_catalogues_still_load(tmp_path):
    old = _model("old")
    old["cascade"]["fallback_on_inplane_edge"] = True  # a catalogue written before the rule was turned off
    new = _model("new")
    new["cascade"].update(plausible_liver_l=[0.3, 3.0], max_lesion_burden_percent=40)
    reg = Registry([_write(tmp_path, _catalogue(old, new, _model("plain")))])
    assert reg.get("old").cascade.fallback_on_inplane_edge is True
    assert reg.get("new").cascade.plausible_liver_l == (0.3, 3.0)
    assert reg.get("new").cascade.max_lesion_burden_percent == 40.0
    plain = reg.get("plain").cascade
    assert plain.fallback_on_inplane_edge is False and plain.plausible_liver_l == (0.5, 4.5)
    assert plain.max_lesion_burden_percent == 50.0
    path = _write(tmp_path / "bad", _broken(lambda d: d["models"][0]["cascade"].update(plausible_liver_l=[4.5, 0.5])))
    with pytest.raises(ModelError, match=r"invalid at models/0 \(m\): plausible_liver_l must be"):
        Registry([path])


@pytest.mark.skipif(not (REPO / "Resources" / "models.json").is_file(), reason="no shipped catalogue yet")
def test_shipped_catalogue_clips_the_box_at_the_inplane_edge():
    for entry in json.loads((REPO / "Resources" / "models.json").read_text())["models"]:
        assert entry["cascade"].get("fallback_on_inplane_edge", False) is False, entry["id"]


def test_duplicate_id_in_one_catalogue(tmp_path):
    path = _write(tmp_path, _catalogue(_model("m"), _model("m", title="again")))
    with pytest.raises(ModelError, match=r"invalid at models/1/id: model 'm' is listed twice"):
        Registry([path])


# --- the user's catalogue ---------------------------------------------------------------------------------------
@pytest.fixture
def shipped_and_user(tmp_path, monkeypatch):
    """A fake Resources folder (schema + catalogue) and a LIVERSEG_HOME with a user catalogue."""
    resources = tmp_path / "Resources"
    resources.mkdir()
    shutil.copy(resources_dir() / "models.schema.json", resources / "models.schema.json")
    _write(resources, _catalogue(_model("shipped-a"), _model("shipped-b"), default="shipped-b"))
    home = tmp_path / "home"
    monkeypatch.setattr(registry_mod, "resources_dir", lambda: resources)
    monkeypatch.setenv("LIVERSEG_HOME", str(home))
    return resources, home


def test_without_user_catalogue_only_the_shipped_one(shipped_and_user):
    resources, home = shipped_and_user
    reg = load_registry()
    assert reg.ids() == ["shipped-a", "shipped-b"] and reg.default_id == "shipped-b"
    assert reg.weight_path(reg.get("shipped-a"), "x.pt") == resources / "weights" / "x.pt"


def test_user_catalogue_overrides_and_extends_the_shipped_one(shipped_and_user):
    resources, home = shipped_and_user
    mine = _model("mine", fine=False)
    mine["stages"]["coarse"]["weights"] = "sub/mine.pt"
    _write(home, _catalogue(_model("shipped-a", title="retrained by me"), mine, default="mine"))
    reg = load_registry()
    assert reg.ids() == ["mine", "shipped-a", "shipped-b"]
    assert reg.get("shipped-a").title == "retrained by me"
    assert reg.raw("shipped-a")["title"] == "retrained by me"
    assert reg.get("shipped-b").title == "model shipped-b"
    assert reg.default_id == "shipped-b"  # the shipped catalogue names the default
    # each catalogue's weights live beside it
    assert reg.weight_path(reg.get("mine"), "sub/mine.pt") == home / "weights" / "sub" / "mine.pt"
    overridden = reg.get("shipped-a")
    assert reg.weight_path(overridden, overridden.coarse.weights) == home / "weights" / "shipped-a_coarse.pt"
    assert reg.weight_path(reg.get("shipped-b"), "x.pt") == resources / "weights" / "x.pt"

    shipped_only = load_registry(include_user=False)
    assert shipped_only.ids() == ["shipped-a", "shipped-b"]
    assert shipped_only.get("shipped-a").title == "model shipped-a"


def test_user_catalogue_default_may_name_a_shipped_model(shipped_and_user):
    resources, home = shipped_and_user
    _write(home, _catalogue(_model("mine"), default="shipped-a"))
    assert load_registry().default_id == "shipped-b"


def test_invalid_user_catalogue_is_refused_with_its_path(shipped_and_user):
    resources, home = shipped_and_user
    bad = _catalogue(_model("mine"))
    bad["models"][0]["stages"]["coarse"]["sha256"] = "not-a-hash"
    path = _write(home, bad)
    with pytest.raises(ModelError, match="is invalid at models/0/stages/coarse/sha256") as info:
        load_registry()
    assert str(path) in str(info.value)
    assert load_registry(include_user=False).ids() == ["shipped-a", "shipped-b"]


def test_user_default_must_exist(shipped_and_user):
    resources, home = shipped_and_user
    path = _write(home, _catalogue(_model("mine"), default="ghost"))
    with pytest.raises(ModelError, match="invalid at default: model 'ghost'") as info:
        load_registry()
    assert str(path) in str(info.value)


def test_catalogue_files_are_not_modified(tmp_path):
    data = _catalogue(_model("m"))
    path = _write(tmp_path, data)
    before = path.read_text()
    reg = Registry([path])
    raw = copy.deepcopy(reg.raw("m"))
    assert raw == data["models"][0]
    assert path.read_text() == before


# --- listing models is instant ----------------------------------------------------------------------------------
def test_importing_the_registry_does_not_import_torch():
    code = ("import sys, LiverSegLib.registry, LiverSegLib.config; "
            "heavy = [m for m in ('torch', 'monai', 'SimpleITK') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"importing LiverSegLib.registry imported {proc.stdout.strip()} {proc.stderr}"
