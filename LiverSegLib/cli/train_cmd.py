"""``liverseg train CONFIG --data DIR --out DIR``: train a network from a recipe on a LiTS, MSD or paired dataset.

Multi-GPU / multi-node: ``torchrun --nproc-per-node N -m LiverSegLib train ...`` (DistributedDataParallel; NCCL on
GPUs, gloo on CPU). The run folder receives ``model.pt`` (best by validation Dice; works with
``liverseg segment --model-file``), ``training_state.pt`` (``--resume``), ``log.csv``, ``curves.png``,
``validation.csv``, ``config.json`` and ``summary.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

from LiverSegLib.errors import InputError

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a network (cascade_coarse, cascade_fine, di2in, di2in_an, mixed_unet)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", metavar="CONFIG",
                   help="recipe name (cascade_coarse, cascade_fine, di2in, di2in_an, mixed_unet) or a JSON file")
    p.add_argument("--data", required=True, type=Path, help="training data: LiTS, MSD Task03 or image/label pairs")
    p.add_argument("--out", required=True, type=Path, help="run folder (must be new or empty unless --resume)")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val", type=Path, help="validation data folder (same layouts as --data)")
    val.add_argument("--folds", type=int, metavar="K", help="K-fold cross-validation over --data (one run per fold)")
    p.add_argument("--max-steps", type=int, metavar="N", help="cap the steps of each phase (trials, tests)")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from training_state.pt")
    p.add_argument("--init", type=Path, metavar="CKPT", help="start from this checkpoint (e.g. a pretrained DI2IN)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set sampler.batch=4 --set steps=2000 (repeatable)")
    p.add_argument("--label-map", metavar="FROM:TO,...",
                   help="map label values of the data to 1 (liver) / 2 (lesion), e.g. 5:1 for TotalSegmentator")
    p.add_argument("--mask-bank", type=Path, action="append", default=[], metavar="DIR",
                   help="DI2IN-AN: liver masks (segmentation-N.nii.gz, 3D-IRCADb MASKS_DICOM.zip) that the "
                        "discriminator sees as real livers instead of the batch's labels (repeatable)")
    p.add_argument("--cache", type=Path, help="folder for the prepared cases (default: OUT/cache)")
    p.add_argument("--overwrite", action="store_true", help="allow a non-empty --out (files are replaced)")
    p.add_argument("--progress", choices=("bar", "none"), default="bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from LiverSegLib.pipeline.predictor import resolve_device
    from LiverSegLib.training.distributed import init_distributed, shutdown
    from LiverSegLib.training.train_config import load_train_config

    config = load_train_config(args.config, args.overrides)
    if args.max_steps is not None and args.max_steps < 1:
        raise InputError("--max-steps must be at least 1")
    if args.folds is not None and args.folds < 2:
        raise InputError("--folds must be at least 2")
    label_map = _parse_label_map(args.label_map)
    from LiverSegLib.training.datasets import list_cases, split_folds

    pairs = list_cases(args.data)
    val_pairs = list_cases(args.val) if args.val else []
    bank = None
    if args.mask_bank:  # read before anything is prepared: a wrong folder stops the run at once
        from LiverSegLib.training.mask_bank import load_mask_bank

        bank = load_mask_bank(args.mask_bank, config.stage)
    _check_out(args.out, args.resume, args.overwrite, folds=bool(args.folds))
    info, device = init_distributed(resolve_device(args.device))
    try:
        if args.folds:
            names = [p.name for p in pairs]
            if args.folds > len(names):
                raise InputError(f"--folds {args.folds} needs at least {args.folds} cases; {args.data} has "
                                 f"{len(names)}")
            rows = []
            for k, (train_names, val_names) in enumerate(split_folds(names, args.folds, config.seed)):
                fold_out = args.out / f"fold{k}"
                if args.resume and (fold_out / "summary.json").is_file():  # this fold finished before the stop
                    with open(fold_out / "validation.csv", newline="") as f:
                        rows += list(csv.DictReader(f))
                    continue
                resume = args.resume and (fold_out / "training_state.pt").is_file()
                rows += _train_one(args, config, [p for p in pairs if p.name in train_names],
                                   [p for p in pairs if p.name in val_names], fold_out, label_map, info, device,
                                   fold=k, resume=resume, bank=bank)
            if info.is_main:
                _write_table(args.out / "validation.csv", rows)
        else:
            _train_one(args, config, pairs, val_pairs, args.out, label_map, info, device, resume=args.resume,
                       bank=bank)
    finally:
        shutdown(info)
    return 0


def _train_one(args, config, train_pairs, val_pairs, out: Path, label_map, info, device, fold=None,
               resume=False, bank=None) -> list[dict]:
    from LiverSegLib.training.cases import prepare_cached
    from LiverSegLib.training.datasets import load_pair
    from LiverSegLib.training.distributed import barrier
    from LiverSegLib.training.trainer import Trainer

    out.mkdir(parents=True, exist_ok=True)
    cache = args.cache or args.out / "cache"

    def prepare(pairs):
        return [prepare_cached(p.name, lambda p=p: load_pair(p, label_map), [p.image, p.label], config.stage, cache)
                for p in pairs]

    # rank 0 prepares (and caches) first; the other ranks then read the cache instead of repeating the work
    if not info.is_main:
        barrier(info)
    say = print if info.is_main else (lambda *a, **k: None)
    say(f"preparing {len(train_pairs)} training and {len(val_pairs)} validation cases for {config.name} "
        f"({config.stage.network.name}) on {device}" + (f", fold {fold}" if fold is not None else ""),
        file=sys.stderr, flush=True)
    train_cases, val_cases = prepare(train_pairs), prepare(val_pairs)
    if info.is_main:
        barrier(info)
        (out / "config.json").write_text(config.to_json() + "\n")
    meta = {"data": str(args.data), "train_cases": [c.name for c in train_cases],
            "val_cases": [c.name for c in val_cases], "fold": fold}
    if bank is not None:
        meta["mask_bank"] = [str(p) for p in args.mask_bank]
    trainer = Trainer(config, train_cases, val_cases, out, device, info, args.max_steps, resume, args.init,
                      bar=args.progress == "bar", metadata=meta, real_masks=bank)
    summary = trainer.run()
    rows = []
    if info.is_main:
        rows = [{**r, **({"fold": fold} if fold is not None else {})} for r in trainer.validation_table()]
        _write_table(out / "validation.csv", rows)
        _print_table(rows, summary, out)
    return rows


def _check_out(out: Path, resume: bool, overwrite: bool, folds: bool = False) -> None:
    if resume:
        if not any((d / "training_state.pt").is_file() for d in ([out, *out.glob("fold*")] if folds else [out])):
            raise InputError(f"--resume: {out} holds no training_state.pt to continue from")
        return
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(p.name != "cache" for p in out.iterdir()) and not overwrite:
        raise InputError(f"--out {out} is not empty; choose a new folder, --resume the run, or pass --overwrite")


def _parse_label_map(text: str | None) -> dict[int, int] | None:
    if not text:
        return None
    try:
        return {int(a): int(b) for a, b in (item.split(":") for item in text.split(","))}
    except ValueError:
        raise InputError(f"--label-map {text!r} must look like 5:1,6:2") from None


def _write_table(path: Path, rows: list[dict]) -> None:
    keys = ["fold", "case", "dice_liver", "dice_lesion"]
    keys = [k for k in keys if any(k in r for r in rows)] or ["case"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _print_table(rows: list[dict], summary: dict, out: Path) -> None:
    def fmt(v):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"

    print(f"trained {summary['steps']} steps in {summary['seconds']:.0f} s ({summary['seconds_per_step']} s/step) "
          f"on {summary['device']}; model: {out / 'model.pt'}")
    if rows:
        print(f"{'case':<28} {'liver Dice':>10} {'lesion Dice':>11}")
        for r in rows:
            print(f"{r['case']:<28} {fmt(r.get('dice_liver')):>10} {fmt(r.get('dice_lesion')):>11}")
    print(json.dumps({"best": summary["best"]}, default=float))
