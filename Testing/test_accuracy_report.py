"""benchmarks/accuracy.py marks unlabelled series that a model was trained on (pseudo-labels) instead of calling
their pictures unseen; read from the checkpoints' own training metadata, ensemble members included."""

from __future__ import annotations

import argparse
import importlib.util
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "Resources" / "weights"


def _accuracy_module():
    spec = importlib.util.spec_from_file_location("accuracy_benchmark", ROOT / "benchmarks" / "accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_series_in_the_shipped_models_training_are_marked(tmp_path):
    from LiverSegLib.training.ensemble_weights import combine_checkpoints

    acc = _accuracy_module()
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    for role in ("coarse", "fine"):
        shutil.copyfile(WEIGHTS / f"han_liver_{role}.pt", shipped / f"han_liver_{role}.pt")
    seen = acc.training_cases(shipped)
    assert {"pseudo:HCC_006_s103", "pseudo:HCC_009_s105", "pseudo:HCC_009_s107", "pseudo:HCC_009_s4"} <= seen
    assert "pseudo:HCC_009_s103" not in seen and "ircadb1_19" in seen  # left out of the pseudo-labels

    previous = tmp_path / "previous"  # han-liver 1.3.0 never saw a pseudo-label; an ensemble of it with 1.4.0 did
    previous.mkdir()
    shutil.copyfile(WEIGHTS / "han_liver_1.3_coarse.pt", previous / "han_liver_coarse.pt")
    shutil.copyfile(WEIGHTS / "han_liver_1.3_fine.pt", previous / "han_liver_fine.pt")
    assert not any(c.startswith("pseudo:") for c in acc.training_cases(previous))
    combine_checkpoints([previous / "han_liver_coarse.pt", shipped / "han_liver_coarse.pt"], tmp_path / "ens.pt")
    shutil.copyfile(tmp_path / "ens.pt", previous / "han_liver_coarse.pt")
    assert "pseudo:HCC_006_s103" in acc.training_cases(previous)

    rows = [{"series": s, "shape_zyx": [2, 3, 4], "spacing_xyz": [1.0, 1.0, 2.5], "liver_l": 1.5, "lesions": 0,
             "lesion_ml": 0.0, "warnings": [], "seconds": 1.0, "in_training": f"pseudo:{s}" in seen,
             "patient_in_training": s != "HCC_1_s1"}
            for s in ("HCC_006_s103", "HCC_009_s103", "HCC_1_s1")]
    args = argparse.Namespace(cases=["lits117"], release_dir=tmp_path, baseline=None, overviews=shipped)
    md = acc.markdown(args, [], [], rows)
    assert "| HCC_006_s103 | 2x3x4 |" in md and md.count("pseudo-labelled in training |") == 1
    seen_col = {line.split("|")[1].strip(): line.rsplit("|", 2)[-2].strip() for line in md.splitlines()
                if line.startswith("| HCC_")}
    assert seen_col == {"HCC_006_s103": "pseudo-labelled in training", "HCC_1_s1": "unseen",
                        "HCC_009_s103": "series unseen; its patient's other series in training"}
