"""Train the shipped DI2IN-AN coarse liver model (Yang et al. 2017), or one leave-one-out fold of it.

Same data as the cascade (:mod:`~LiverSegLib.training.release_weights`: the real CTs, the synthetic pool with its
hard negatives), on Yang's 3 mm isotropic grid; then Yang's adversarial phase, whose discriminator sees the
liver-mask bank (90 LiTS masks and the 3D-IRCADb mask sets, minus the held-out case's own) as the real livers. The
fine stage of the catalogue entry is the cascade's (same fold), so the two coarse models can be compared on the same
pipeline.

CPU sizing (the paper trained on a GPU): features 8-128 instead of 32-512, 48 x 96 x 96 crops (144 x 288 x 288 mm),
batch 2; the adversarial phase with k_D = 2 discriminator steps of 2 and k_G = 1 generator step of 2 (the paper: 10
of 8, 1 of 4), lambda 0.01 as in the paper.

Usage::

    python -m LiverSegLib.training.release_di2in --out $LIVERSEG_HOME/release/all [--leave-out CASE] [--resume]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from LiverSegLib.config import ModelConfig, NetworkSpec, StageConfig
from LiverSegLib.training.demo_weights import HU_WINDOW
from LiverSegLib.training.release_weights import (
    EVAL_CASES,
    POOL_SOURCE_OF,
    cascade,
    fine_stage,
    pool_cases,
    real_cases,
)
from LiverSegLib.training.train_config import TrainConfig, load_train_config

__all__ = ["di2in_stage", "di2in_cascade", "di2in_recipe", "loo_accuracy", "refresh_entry", "score_case", "main"]

WEIGHTS = "di2in_an_coarse.pt"


def di2in_stage(weights: str = WEIGHTS, sha256: str = "0" * 64) -> StageConfig:
    """DI2IN at Yang's 3 mm isotropic grid, narrowed for CPU training."""
    return StageConfig(
        network=NetworkSpec("DI2IN", {"in_channels": 1, "out_channels": 2, "features": [8, 16, 32, 64, 128],
                                      "branch_levels": [4, 2, 0]}),
        weights=weights, sha256=sha256, classes=(0, 1), hu_window=HU_WINDOW, spacing_xyz=(3.0, 3.0, 3.0),
        context_slices=1, batch_cpu=1, batch_cuda=1,
    )


#: The catalogue version of ``di2in-an-liver`` (its own; the weights are 1.0.0's).
DI2IN_VERSION = "1.1.0"


def di2in_cascade():
    """The rules of ``di2in-an-liver``: han-liver's, without its liver blend and its neck cut.

    1.1.0 takes han-liver 1.2.0's fixed 1.0 mm in-plane grid for the fine stage (the same fine network: it met the
    1.5 mm and 3 mm scans at the wrong scale under 1.0.0's native grid; leave-one-out liver Dice 0.764 -> 0.783 on
    lits117 and 0.783 -> 0.846 on ts_example_ct, ircadb1_19 0.837 -> 0.836, chosen on those folds). The blend was
    chosen for the 2.5D coarse stage: this DI2IN over-segments, and blending its confident false regions made them
    liver (ircadb1_19: 0.798 blended against 0.836). The neck cut changed nothing on the four folds; it is left off
    because it was not chosen for this coarse stage.
    """
    from dataclasses import replace

    return replace(cascade(), coarse_liver_weight=0.0, coarse_neck_mm=None)


def di2in_recipe(steps: int, iterations: int, seed: int) -> TrainConfig:
    """Yang's DI2IN-AN recipe (``Resources/configs/di2in_an.json``) sized for a CPU (see the module docstring)."""
    from LiverSegLib.pipeline.stage import stage_config_dict

    base = load_train_config("di2in_an").raw
    stage = di2in_stage()
    adv = {**base["adversarial"], "k_d": 2, "k_g": 1, "batch_d": 2, "batch_g": 2, "iterations": iterations}
    raw = {**base, "name": "di2in_an_liver",
           "stage": {**stage_config_dict(stage), "batch_cpu": 1, "batch_cuda": 1},
           "sampler": {"kind": "volumes", "batch": 2, "crop": [48, 96, 96], "foreground_prob": 0.7,
                       "scale_range": [0.85, 1.2], "intensity_jitter": [0.2, 0.1], "flip": False},
           "loss": {"name": "weighted_ce", "class_weights": [0.4, 1.0], "hard_negative_weight": 4.0,
                    "deep_supervision": {"final_weight": 1.0}},
           "scheduler": {"name": "step", "every": max(1, steps // 2), "gamma": 0.1},
           "steps": steps, "validate_every": max(1, steps // 4), "adversarial": adv, "seed": seed}
    return TrainConfig.from_dict(raw, source="release DI2IN-AN recipe")


def score_case(weights_dir: Path, case: str) -> dict:
    """The DI2IN-AN coarse stage with the cascade's fine stage of the same fold, on a real case."""
    from LiverSegLib.data.samples import load_case
    from LiverSegLib.metrics import evaluate_case
    from LiverSegLib.pipeline.predictor import Predictor
    from LiverSegLib.weights import sha256_file

    d = Path(weights_dir)
    model = ModelConfig("fold", "0", "fold", di2in_stage(sha256=sha256_file(d / WEIGHTS)),
                        fine_stage(sha256=sha256_file(d / "han_liver_fine.pt")), di2in_cascade(),
                        weights_dir=str(d))
    ct, label = load_case(case)
    t = time.perf_counter()
    result = Predictor(model, device="cpu").predict(ct)
    scores = evaluate_case(result.labelmap.array_zyx, label.array_zyx, tuple(ct.spacing_xyz[::-1]))
    return {"case": case, "model": "di2in-an", "seconds": round(time.perf_counter() - t, 2),
            "box_fallback": result.details.get("box_fallback"), "warnings": list(result.warnings), **scores}


def loo_accuracy(release_dir: Path) -> dict:
    """The catalogue's ``accuracy`` block from the folds' ``loo_di2in_an_<case>.json`` under ``release_dir``."""
    from LiverSegLib.training.release_weights import rounded_scores

    keys = ("liver_dice", "liver_assd", "liver_rvd", "lesion_dice", "lesion_recall", "lesion_precision", "lesion_fp")
    scores = {}
    for f in sorted(Path(release_dir).glob("*/loo_di2in_an_*.json")):
        r = json.loads(f.read_text())
        scores[r["case"]] = rounded_scores(r, keys)
    missing = [c for c in EVAL_CASES if c not in scores]
    method = ("leave-one-out: each fold's DI2IN-AN and cascade fine stage never saw its case (image, masks, mask "
              "bank, synthetic CTs)" + (f"; folds not trained: {', '.join(missing)}" if missing else ""))
    return {"method": method, **scores}


def refresh_entry(path: Path, release_dir: Path) -> None:
    """Rewrite the ``di2in-an-liver`` entry's version, cascade rules and accuracy block in ``path`` (the rules its
    folds were scored with); its stages, their weights and ONNX exports stay as they are."""
    data = json.loads(path.read_text())
    entry = next(m for m in data["models"] if m["id"] == "di2in-an-liver")
    entry.update({"version": DI2IN_VERSION, "cascade": di2in_cascade().to_dict(),
                  "accuracy": loo_accuracy(release_dir)})
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_catalogue(path: Path, weights_dir: Path, release_dir: Path) -> None:
    """Add (or replace) the ``di2in-an-liver`` entry in ``path``: DI2IN-AN coarse + the cascade's fine stage."""
    from LiverSegLib.training.release_weights import catalogue_entry
    from LiverSegLib.weights import sha256_file

    shas = {"coarse": sha256_file(weights_dir / "han_liver_coarse.pt"),
            "fine": sha256_file(weights_dir / "han_liver_fine.pt")}
    entry = catalogue_entry(shas, {}, {})
    entry["stages"]["coarse"] = di2in_stage(sha256=sha256_file(weights_dir / WEIGHTS)).to_dict()
    entry["cascade"] = di2in_cascade().to_dict()
    entry.update({"id": "di2in-an-liver", "version": DI2IN_VERSION,
                  "title": "DI2IN-AN coarse liver model + han-liver 1.3.0 fine stage (non-commercial)",
                  "description": "Yang et al. 2017 DI2IN (3D, deep supervision) at 3 mm, trained on the same real and "
                                 "synthetic CTs as han-liver, then Yang's adversarial phase with 106 manual liver "
                                 "masks (LiTS, 3D-IRCADb) as the discriminator's real samples; han-liver 1.3.0's "
                                 "fine stage labels liver and lesions in its box. Research use, not for clinical "
                                 "decisions.",
                  "accuracy": loo_accuracy(release_dir)})
    data = json.loads(path.read_text())
    models = [m for m in data["models"] if m["id"] != entry["id"]]
    at = next((i + 1 for i, m in enumerate(models) if m["id"] == "han-liver"), len(models))
    data["models"] = models[:at] + [entry] + models[at:]
    path.write_text(json.dumps(data, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    from LiverSegLib._paths import home_dir
    from LiverSegLib.data.samples import shared_data_dir
    from LiverSegLib.training.mask_bank import load_mask_bank
    from LiverSegLib.training.trainer import Trainer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--leave-out", choices=EVAL_CASES)
    p.add_argument("--steps", type=int, default=300, help="supervised DI2IN steps before the adversarial phase")
    p.add_argument("--iterations", type=int, default=40, help="adversarial iterations (Algorithm 1)")
    p.add_argument("--pool", type=Path, default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--catalogue", type=Path, metavar="MODELS_JSON",
                   help="no training: copy --out's DI2IN-AN weights next to the catalogue and add its entry")
    p.add_argument("--release-dir", type=Path, help="folder of the fold folders (for --catalogue)")
    p.add_argument("--refresh", action="store_true",
                   help="with --catalogue: rewrite only the entry's version, rules and accuracy (from the folds' "
                        "scores), not its stages")
    p.add_argument("--rescore", action="store_true",
                   help="no training: score --out's fold again with the current rules (loo_di2in_an_<case>.json)")
    args = p.parse_args(argv)
    if args.catalogue and args.refresh:
        refresh_entry(args.catalogue, args.release_dir or args.out.parent)
        return 0
    if args.rescore:
        from LiverSegLib.training.release_weights import write_scores

        if not args.leave_out:
            p.error("--rescore needs --leave-out CASE")
        write_scores(args.out / f"loo_di2in_an_{args.leave_out}.json", score_case(args.out, args.leave_out))
        return 0
    if args.catalogue:
        import shutil

        shutil.copyfile(args.out / WEIGHTS, args.catalogue.parent / "weights" / WEIGHTS)
        write_catalogue(args.catalogue, args.catalogue.parent / "weights", args.release_dir or args.out.parent)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = di2in_recipe(args.steps, args.iterations, args.seed)
    cases = real_cases(cfg.stage, args.leave_out)
    cases += pool_cases((args.pool or home_dir() / "pool") / "coarse", cfg.stage, args.leave_out,
                        sum(c.weight for c in cases))
    shared = shared_data_dir()
    bank_dirs = [shared / "lits_liver_masks", shared / "ircadb_masks"] if shared is not None else []
    exclude = {POOL_SOURCE_OF[args.leave_out]} if args.leave_out in POOL_SOURCE_OF else set()
    bank = load_mask_bank(bank_dirs, cfg.stage, exclude | {"lits-74"}) if bank_dirs else None
    print(f"di2in-an: {len(cases)} cases, mask bank of {len(bank or [])}", flush=True)
    run_dir = args.out / "run_di2in_an"
    resume = args.resume and (run_dir / "training_state.pt").is_file()
    t0 = time.perf_counter()
    Trainer(cfg, cases, [], run_dir, torch.device("cpu"), bar=False, resume=resume, real_masks=bank,
            metadata={"role": "coarse", "leave_out": args.leave_out}).run()
    os.replace(run_dir / "model.pt", args.out / WEIGHTS)
    print(json.dumps({"train_seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    if args.leave_out and (args.out / "han_liver_fine.pt").is_file():
        from LiverSegLib.training.release_weights import write_scores

        write_scores(args.out / f"loo_di2in_an_{args.leave_out}.json", score_case(args.out, args.leave_out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
