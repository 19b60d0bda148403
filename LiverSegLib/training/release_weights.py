"""Train the shipped liver models on every real scan and label map there is, or one leave-one-out fold of them.

Training data of a model (minus the held-out case of a fold, in every form):

* the four real labelled CTs (``ircadb1_19``, ``lits117``, ``ts_example_ct``, ``ts_example_dicom``) and the dcmqi
  3-slice CT; where a multi-organ map exists (the TotalSegmentator examples) the organs next to the liver are
  marked as hard negatives (:data:`~LiverSegLib.training.organs.HARD_NEGATIVE_LABEL`), weighted up in the loss;
* the synthetic-CT pools (:mod:`~LiverSegLib.training.synth_pool`), painted from the 3D-IRCADb mask sets and the
  TotalSegmentator example's map, with LiTS liver shapes transplanted into half of them; a fold drops the pool
  entries painted from its held-out case's own masks. All their organs are known: the hard negatives are marked.

Usage::

    python -m LiverSegLib.training.release_weights --out $LIVERSEG_HOME/release/all          # the shipped weights
    python -m LiverSegLib.training.release_weights --out $LIVERSEG_HOME/release/lits117 --leave-out lits117
    python -m LiverSegLib.training.release_weights ... --resume                             # after an interruption
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from LiverSegLib.config import CascadeConfig, ModelConfig, StageConfig
from LiverSegLib.errors import InputError
from LiverSegLib.training import demo_weights
from LiverSegLib.training.cases import PreparedCase, prepare_case
from LiverSegLib.training.organs import HARD_NEGATIVE_ORGANS, ORGAN_NAMES, hard_negative_organs, to_training_label
from LiverSegLib.training.train_config import TrainConfig, load_train_config
from LiverSegLib.types import Volume

__all__ = ["EVAL_CASES", "POOL_SOURCE_OF", "fold_model", "coarse_stage", "fine_stage", "cascade", "recipe",
           "real_cases", "pool_cases", "score_case", "write_scores", "main"]

#: The real labelled CTs of the leave-one-out evaluation.
EVAL_CASES: tuple[str, ...] = ("ircadb1_19", "lits117", "ts_example_ct", "ts_example_dicom")
#: Real cases always in training (not part of the evaluation: 3 slices).
EXTRA_CASES: tuple[str, ...] = ("dcmqi_3slice",)
#: The pool source painted from an evaluation case's own masks (left out of that case's fold).
POOL_SOURCE_OF: dict[str, str] = {"ircadb1_19": "ircad1.19", "ts_example_ct": "ts_example_ct"}
# Synthetic lesions in the real livers for the fine stage (the real data has few lesions): hypodense mostly.
SYNTH_LESIONS = {"apply_probability": 0.5, "reuse": 8, "n_lesions": [1, 4], "radius_mm": [3.0, 15.0],
                 "hu_shift": [-70.0, -15.0], "rim_probability": 0.3}


def coarse_stage(weights: str = "han_liver_coarse.pt", sha256: str = "0" * 64) -> StageConfig:
    """The coarse liver stage: the demo model's network and grid (Han's 2.5D residual U-Net, 2 x 2 x 2.5 mm)."""
    return demo_weights.coarse_stage(weights, sha256)


def fine_stage(weights: str = "han_liver_fine.pt", sha256: str = "0" * 64) -> StageConfig:
    """The fine liver/lesion stage: the demo model's network, trained at native resolution (as Han); the cascade
    runs it on a fixed 1.0 mm in-plane grid (:func:`cascade`)."""
    return demo_weights.fine_stage(weights, sha256)


def cascade() -> CascadeConfig:
    """Cascade rules: 10 mm margin; lesion components need a maximum probability of 0.8 (Han) to stay; the fine
    result is gated to 5 mm around the coarse liver (``coarse_gate_mm``; chosen on the ircadb1_19 fold, where the
    ungated fine stage took pieces of the spleen and heart: liver Dice 0.856 ungated, 0.889 at 5 mm and 10 mm).

    1.2.0 (same weights as 1.0.0/1.1.0): the fine stage runs on a fixed 1.0 mm in-plane grid for every scan
    (``fine_inplane_mm``; 1.1.0 only coarsened finer scans to 1.0 mm, so the 1.5 mm and 3 mm scans met a network
    trained mostly on 0.6-1.0 mm pixels: the fine stage alone went from 0.865 to 0.891 and from 0.748 to 0.882
    there), and the liver probability is the mean of the two stages' (``coarse_liver_weight`` 0.5: better than the
    fine stage alone on every fold, better than the coarse stage alone on three of four). Both chosen on the
    leave-one-out folds themselves (see the model card).

    1.3.0 (same weights): parts of the coarse liver beyond a neck thinner than about 16 mm are cut off
    (``coarse_neck_mm`` 8, cores of 10 mL or more). The coarse stage joined the heart to the liver dome through the
    diaphragm on the unseen HCC-TACE-Seg series HCC_006 (0.70 L of heart) and HCC_009 s107 (pieces at the heart
    base); 8 mm is the smallest of 4/6/8/10 mm that cut HCC_006's heart, chosen by looking at those series. It cuts
    nothing on the four leave-one-out cases (their scores are unchanged).

    1.4.0 (new weights, same rules): the coarse stage is the pseudo-label student (``--pseudo``), the fine stage
    has the gallbladder and portal vein as extra hard negatives (``--extra-hard-negatives``); see the model card.
    """
    return CascadeConfig(margin_mm=(10.0, 10.0, 10.0), min_liver_ml=30.0, fallback_on_inplane_edge=False,
                         coarse_threshold=0.5, lesion_threshold=0.8, coarse_gate_mm=5.0, fine_inplane_mm=1.0,
                         coarse_liver_weight=0.5, coarse_neck_mm=8.0, coarse_neck_min_ml=10.0)


def recipe(role: str, steps: int, lr: float, seed: int, synth_lesions: dict[str, Any] | None = None,
           hard_negative_weight: float | None = None) -> TrainConfig:
    """Han's recipe (``Resources/configs/cascade_*.json``) scaled to CPU training on this data.

    ``synth_lesions`` overrides entries of :data:`SYNTH_LESIONS` for the fine stage; the coarse stage gets synthetic
    lesions only when it is given (then :data:`SYNTH_LESIONS` with these entries). ``hard_negative_weight`` replaces
    the stage's factor on hard-negative voxels (default: coarse 4, fine 2).

    Choices beyond Han (the paper trained 50 LiTS epochs on a GPU): narrow networks; SGD lr 1e-2 with a step decay
    x0.5 every quarter; the coarse loss weights background 0.4 / liver 1.0 (Han's 0.2 / 1.2 taught the old model to
    call any liver-grey tissue liver) and hard-negative organs x4; isotropic zoom 0.8-1.25 and intensity jitter
    (+-40 HU offset, +-10 % gain) on top of the synthetic CTs' own randomisation.
    """
    stage = coarse_stage() if role == "coarse" else fine_stage()
    from LiverSegLib.pipeline.stage import stage_config_dict

    base = load_train_config(f"cascade_{role}").raw
    if role == "coarse":
        sampler = {"kind": "slices", "batch": 8, "crop": 160, "liver_slices_only": False, "foreground_prob": 0.5,
                   "scale_range": [0.8, 1.25], "intensity_jitter": [0.2, 0.1], "flip": False}
        loss = {"name": "weighted_ce", "class_weights": [0.4, 1.0], "hard_negative_weight": 4.0}
    else:
        sampler = {"kind": "slices", "batch": 8, "crop": 112, "liver_slices_only": True, "foreground_prob": 0.8,
                   "scale_range": [0.7, 1.4], "intensity_jitter": [0.2, 0.1], "flip": False}
        loss = {"name": "weighted_ce", "class_weights": [0.2, 1.2, 2.2], "hard_negative_weight": 2.0}
    if hard_negative_weight is not None:
        loss["hard_negative_weight"] = float(hard_negative_weight)
    d = stage_config_dict(stage)
    lesions = {**SYNTH_LESIONS, **(synth_lesions or {})} if role == "fine" or synth_lesions is not None else None
    raw = {**base, "name": f"han_liver_{role}", "stage": {**d, "batch_cpu": stage.batch_cpu,
                                                         "batch_cuda": stage.batch_cuda},
           "sampler": sampler, "loss": loss, "synthetic_lesions": lesions,
           "optimizer": {**base["optimizer"], "lr": lr},
           "scheduler": {"name": "step", "every": max(1, steps // 4), "gamma": 0.5},
           "steps": steps, "validate_every": max(1, steps // 8), "seed": seed}
    return TrainConfig.from_dict(raw, source=f"release {role} recipe")


def _ts_label(name: str, ct: Volume, liver: Volume,
              negative_organs: tuple[int, ...] = HARD_NEGATIVE_ORGANS) -> Volume:
    """The TotalSegmentator example's label with its hard-negative organs marked (liver from ``liver``)."""
    from LiverSegLib.data.samples import case_info, fetch_source
    from LiverSegLib.training.mask_sources import read_totalsegmentator_map

    info = case_info(name)
    organ = read_totalsegmentator_map(fetch_source(info["source"]) / info["dir"] / info["files"][1], ct=ct)
    lab = to_training_label(np.asarray(organ.array_zyx), hard_negatives=True, negative_organs=negative_organs)
    lab[np.asarray(liver.array_zyx) > 0] = np.asarray(liver.array_zyx)[np.asarray(liver.array_zyx) > 0]
    return liver.with_array(lab)


def real_cases(stage: StageConfig, leave_out: str | None, weight: float = 3.0,
               negative_organs: tuple[int, ...] = HARD_NEGATIVE_ORGANS) -> list[PreparedCase]:
    """The real labelled CTs minus ``leave_out``, on the stage's grid (``negative_organs`` marked where a multi-organ
    map exists)."""
    from LiverSegLib.data.samples import load_case

    cases = []
    for name in EVAL_CASES + EXTRA_CASES:
        if name == leave_out:
            continue
        try:
            ct, label = load_case(name)
        except Exception as exc:  # noqa: BLE001 - shared-only cases are absent on a user's machine
            print(f"skipping {name}: {exc}", flush=True)
            continue
        if name.startswith("ts_example"):
            label = _ts_label(name, ct, label, negative_organs)
        w = weight * (0.3 if name == "dcmqi_3slice" else 1.0)
        cases.append(prepare_case(name, ct, label, stage, w))
    return cases


def pool_cases(pool_dir: Path | None, stage: StageConfig, leave_out: str | None,
               total_weight: float, negative_organs: tuple[int, ...] = HARD_NEGATIVE_ORGANS) -> list[PreparedCase]:
    """Synthetic CTs of the pool (minus those painted from ``leave_out``'s masks), sharing ``total_weight``, with
    ``negative_organs`` marked as hard negatives."""
    from LiverSegLib.training.synth_pool import load_pool

    if pool_dir is None or not Path(pool_dir).is_dir():
        return []
    exclude = {POOL_SOURCE_OF[leave_out]} if leave_out in POOL_SOURCE_OF else set()
    entries = load_pool(Path(pool_dir), exclude)
    out = []
    for name, ct, organs, _ in entries:
        label = organs.with_array(to_training_label(np.asarray(organs.array_zyx), hard_negatives=True,
                                                    negative_organs=negative_organs))
        out.append(prepare_case(f"synth:{name}", ct, label, stage, total_weight / max(1, len(entries))))
    return out


def stage_for_file(stage: StageConfig, weights_path: Path) -> StageConfig:
    """``stage`` bound to the checkpoint ``weights_path``: its sha256, and its network as the file describes it (the
    stage's own network, or a :class:`~LiverSegLib.networks.ensemble.MeanEnsemble` of it packed by
    :mod:`~LiverSegLib.training.ensemble_weights`)."""
    import dataclasses

    from LiverSegLib.config import NetworkSpec
    from LiverSegLib.weights import load_checkpoint, sha256_file

    net = load_checkpoint(weights_path)["config"]["network"]
    return dataclasses.replace(stage, sha256=sha256_file(weights_path),
                               network=NetworkSpec(net["name"], dict(net.get("kwargs", {}))))


def fold_model(weights_dir: Path, name: str = "fold") -> ModelConfig:
    """The cascade of a folder this script trained (its two weight files, the shipped cascade rules)."""
    d = Path(weights_dir)
    return ModelConfig(name, "0", name, stage_for_file(coarse_stage(), d / "han_liver_coarse.pt"),
                       stage_for_file(fine_stage(), d / "han_liver_fine.pt"), cascade(), weights_dir=str(d))


def score_case(weights_dir: Path, case: str) -> dict:
    """Run the whole cascade with the weights in ``weights_dir`` on a real case and score it (LiTS metrics)."""
    from LiverSegLib.data.samples import load_case
    from LiverSegLib.metrics import evaluate_case
    from LiverSegLib.pipeline.predictor import Predictor

    model = fold_model(weights_dir)
    ct, label = load_case(case)
    t = time.perf_counter()
    result = Predictor(model, device="cpu").predict(ct)
    scores = evaluate_case(result.labelmap.array_zyx, label.array_zyx, tuple(ct.spacing_xyz[::-1]))
    return {"case": case, "seconds": round(time.perf_counter() - t, 2),
            "box_fallback": result.details.get("box_fallback"), "warnings": list(result.warnings), **scores}


MODEL_ID = "han-liver"
#: The scores a catalogue entry quotes from a fold's ``loo_<case>.json``.
SCORE_KEYS = ("liver_dice", "liver_assd", "liver_rvd", "lesion_dice", "lesion_recall", "lesion_precision",
              "lesion_fp", "n_ref_lesions", "n_pred_lesions")


def rounded_scores(scores: dict, keys: tuple[str, ...] = SCORE_KEYS) -> dict:
    """``scores[k]`` rounded to 4 decimals; NaN (e.g. lesion recall without reference lesions) as null (not JSON)."""
    import math

    return {k: (round(float(scores[k]), 4) if math.isfinite(float(scores[k])) else None) for k in keys if k in scores}
MODEL_VERSION = "1.4.0"


def catalogue_entry(shas: dict[str, str], loo: dict[str, dict], train_seconds: dict[str, float],
                    stages: dict[str, StageConfig] | None = None) -> dict:
    """The ``models.json`` entry of the shipped cascade, quoting the leave-one-out results (``stages``: the stages
    bound to their files, see :func:`stage_for_file`; default the plain networks with ``shas``)."""
    from LiverSegLib.config import ModelConfig

    accuracy: dict = {"method": "leave-one-out over the four real labelled CTs: each fold trains both stages without "
                                "the case in any form (image, masks, synthetic CTs painted from its masks), then runs "
                                "the whole cascade on it (benchmarks/accuracy.py)"}
    for case, r in sorted(loo.items()):
        accuracy[case] = rounded_scores(r)
    return ModelConfig(
        id=MODEL_ID, version=MODEL_VERSION,
        title="Han 2.5D cascade trained on real CT, mask banks and label-driven synthetic CT (non-commercial)",
        description="Han 2017 coarse-to-fine 2.5D residual U-Net cascade. Trained on four real labelled CTs plus "
                    "synthetic CTs painted from 17 3D-IRCADb multi-organ mask sets and the TotalSegmentator "
                    "example's map (liver shapes from 90 LiTS masks transplanted into half), with the organs "
                    "around the liver weighted as hard negatives (the fine stage also the gallbladder and portal "
                    "vein); the coarse stage also learned from filtered pseudo-labels of four unlabelled "
                    "HCC-TACE-Seg series. Research use, not for clinical decisions.",
        licence="Non-commercial use only (CC BY-NC-SA 4.0): trained on 3D-IRCADb (CC BY-NC-ND 4.0) and LiTS "
                "(CC BY-NC-SA 4.0) material",
        license="CC-BY-NC-SA-4.0",
        training_data="3D-IRCADb-01 patient 19 CT and masks and 17 3D-IRCADb mask sets (CC BY-NC-ND 4.0); 90 LiTS "
                      "liver masks (CC BY-NC-SA 4.0); LiTS case 117 via liver-ct-segmentation-package (MIT); "
                      "TotalSegmentator example CT, DICOM example and their maps (Apache-2.0; TotalSegmentator "
                      "predictions); dcmqi 3-slice CT (BSD-style); synthetic CTs painted from these maps; "
                      "pseudo-labels of 4 TCIA HCC-TACE-Seg series of 2 patients (CC BY 4.0)",
        model_card="Resources/MODEL_CARD_han-liver.md",
        coarse=(stages or {}).get("coarse") or coarse_stage(sha256=shas["coarse"]),
        fine=(stages or {}).get("fine") or fine_stage(sha256=shas["fine"]), cascade=cascade(),
        accuracy=accuracy, runtimes={"train_seconds_cpu_1_thread": train_seconds} if train_seconds else {},
    ).to_dict()


def write_catalogue(path: Path, weights_dir: Path, release_dir: Path) -> None:
    """Put the shipped cascade first in ``path`` (``models.json``) as the default, keeping the other entries."""
    from LiverSegLib.weights import sha256_file

    shas = {role: sha256_file(weights_dir / f"han_liver_{role}.pt") for role in ("coarse", "fine")}
    stages = {"coarse": stage_for_file(coarse_stage(), weights_dir / "han_liver_coarse.pt"),
              "fine": stage_for_file(fine_stage(), weights_dir / "han_liver_fine.pt")}
    loo = {c: json.loads((release_dir / c / f"loo_{c}.json").read_text()) for c in EVAL_CASES
           if (release_dir / c / f"loo_{c}.json").is_file()}
    seconds = {}
    for role in ("coarse", "fine"):
        summary = release_dir / "all" / f"run_{role}" / "summary.json"
        if summary.is_file():
            seconds[role] = json.loads(summary.read_text())["seconds"]
    data = json.loads(path.read_text())
    data["models"] = [catalogue_entry(shas, loo, seconds, stages)] + [m for m in data["models"] if m["id"] != MODEL_ID]
    data["default"] = MODEL_ID
    path.write_text(json.dumps(data, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    from LiverSegLib._paths import home_dir
    from LiverSegLib.training.trainer import Trainer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="folder for han_liver_coarse.pt / han_liver_fine.pt")
    p.add_argument("--leave-out", choices=EVAL_CASES, help="hold this case out (in every form) and score it")
    p.add_argument("--stages", default="coarse,fine")
    p.add_argument("--coarse-steps", type=int, default=1500)
    p.add_argument("--fine-steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--pool", type=Path, default=None, help="pool root with coarse/ and native/ (default "
                                                             "$LIVERSEG_HOME/pool)")
    p.add_argument("--resume", action="store_true", help="continue the stage runs found in --out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--synth-lesions", type=json.loads, default=None, metavar="JSON",
                   help='override entries of the fine stage\'s synthetic lesions, e.g. \'{"edge_probability": 0}\'')
    p.add_argument("--coarse-synth-lesions", type=json.loads, default=None, metavar="JSON",
                   help="give the coarse stage synthetic lesions too, with these entries over the fine stage's "
                        "defaults ('{}': the defaults)")
    p.add_argument("--pseudo", type=Path, default=None, metavar="DIR",
                   help="pseudo-labelled unlabelled series (training.pseudo_labels) for the coarse stage; for a fold "
                        "their teachers must not have seen the held-out case")
    p.add_argument("--pseudo-exclude", nargs="*", default=[], metavar="SERIES",
                   help="pseudo-labelled series left out (rejected when their pseudo-labels were looked at)")
    p.add_argument("--pseudo-weight", type=float, default=2.0,
                   help="sampling weight of each pseudo-labelled patient (a real case: 3)")
    p.add_argument("--extra-hard-negatives", nargs="*", default=[], metavar="ORGAN",
                   help="organs (training.organs names, e.g. gallbladder portal_vein) marked as hard negatives on top "
                        "of the default set, in every stage this run trains")
    p.add_argument("--hard-negative-weight", type=float, default=None, metavar="W",
                   help="loss factor on hard-negative voxels in every stage this run trains (default: coarse 4, "
                        "fine 2)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu", help="where the networks train: cpu (default) or cuda[:N]; the samples "
                                                     "are always made on the CPU")
    p.add_argument("--catalogue", type=Path, metavar="MODELS_JSON",
                   help="no training: copy --out's weights into the catalogue's weights folder and make this model "
                        "the catalogue's default, quoting the loo_*.json results under --release-dir")
    p.add_argument("--release-dir", type=Path, help="folder of the fold folders (for --catalogue)")
    args = p.parse_args(argv)
    if args.catalogue:
        import shutil

        target = args.catalogue.parent / "weights"
        for role in ("coarse", "fine"):
            shutil.copyfile(args.out / f"han_liver_{role}.pt", target / f"han_liver_{role}.pt")
        write_catalogue(args.catalogue, target, args.release_dir or args.out.parent)
        return 0
    try:
        negatives = hard_negative_organs(args.extra_hard_negatives)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.hard_negative_weight is not None and not args.hard_negative_weight > 0:
        raise SystemExit(f"error: --hard-negative-weight must be > 0, got {args.hard_negative_weight}")
    if args.threads:
        torch.set_num_threads(args.threads)
    from LiverSegLib.pipeline.predictor import resolve_device

    try:
        device = resolve_device(args.device)
    except InputError as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.pseudo is not None:  # refuse unusable pseudo-labels before anything trains
        from LiverSegLib.training.pseudo_labels import load_records

        try:
            load_records(args.pseudo, args.leave_out, args.pseudo_exclude)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"error: {exc}") from None
    pool = args.pool or home_dir() / "pool"
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for role in [r.strip() for r in args.stages.split(",") if r.strip()]:
        target = args.out / f"han_liver_{role}.pt"
        if target.is_file() and args.resume:
            print(f"{role}: {target} exists, skipped", flush=True)
            continue
        steps = args.coarse_steps if role == "coarse" else args.fine_steps
        cfg = recipe(role, steps, args.lr, args.seed,
                     args.synth_lesions if role == "fine" else args.coarse_synth_lesions, args.hard_negative_weight)
        cases = real_cases(cfg.stage, args.leave_out, negative_organs=negatives)
        real_weight = sum(c.weight for c in cases)
        cases += pool_cases(pool / ("coarse" if role == "coarse" else "native"), cfg.stage, args.leave_out,
                            real_weight, negatives)
        if args.pseudo is not None and role == "coarse":  # liver labels only: the fine stage learns lesions too
            from LiverSegLib.training.pseudo_labels import pseudo_cases

            try:
                cases += pseudo_cases(args.pseudo, cfg.stage, args.pseudo_weight, args.leave_out,
                                      exclude=args.pseudo_exclude)
            except (OSError, ValueError) as exc:
                raise SystemExit(f"error: {exc}") from None
        print(f"{role}: {len(cases)} cases ({sum(c.name.startswith('synth:') for c in cases)} synthetic)", flush=True)
        run_dir = args.out / f"run_{role}"
        meta = {"role": role, "leave_out": args.leave_out, "cases": [c.name for c in cases],
                "pseudo": str(args.pseudo) if args.pseudo is not None and role == "coarse" else None,
                "pseudo_exclude": args.pseudo_exclude,
                "hard_negative_organs": [ORGAN_NAMES[v] for v in negatives]}
        resume = args.resume and (run_dir / "training_state.pt").is_file()
        Trainer(cfg, cases, [], run_dir, device, bar=False, resume=resume, metadata=meta).run()
        os.replace(run_dir / "model.pt", target)
    print(json.dumps({"train_seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    if args.leave_out:
        write_scores(args.out / f"loo_{args.leave_out}.json", score_case(args.out, args.leave_out))
    return 0


def write_scores(path: Path, scores: dict) -> None:
    """A fold's scores as ``loo_*.json`` (read by the catalogue writers and ``benchmarks/accuracy.py``), echoed."""
    path.write_text(json.dumps(scores, indent=1, default=float))
    print(json.dumps({k: v for k, v in scores.items() if not isinstance(v, list)}, default=float), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
