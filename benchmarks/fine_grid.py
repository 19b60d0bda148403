"""Choose the fine stage's in-plane floor by measurement: leave-one-out accuracy and fine-stage time per floor.

    .venv/bin/python benchmarks/fine_grid.py --release-dir $LIVERSEG_HOME/release --floors none 0.8 1.0 \
        [--cases ircadb1_19 lits117 ts_example_ct ts_example_dicom] [--threads 1] [--out benchmarks/results/fine_grid]

For every fold ``DIR/<case>/`` (trained without its case, as ``benchmarks/accuracy.py`` uses them) and every floor,
the whole cascade runs on the held-out case with ``cascade.fine_inplane_floor_mm`` set to that floor ("none":
native resolution) and is scored with the LiTS metrics. The issue's rule: a floor is acceptable when no case's
liver or lesion Dice drops by more than 0.005 against native. Writes ``<out>.md`` and ``<out>.json``. A harness,
not a test; the fine-stage time is one run on a shared machine (see the machine line).

It measures 1.1.0's floor rule: han-liver 1.2.0's fixed 1.0 mm grid (``cascade.fine_inplane_mm``) is switched off
for each floor, and ``benchmarks/accuracy.py --cascade`` compares the two rules. Folds whose fine stage fixes its own
in-plane grid (``spacing_xyz``), where a floor changes nothing, are refused.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from LiverSegLib.data.samples import load_case  # noqa: E402
from LiverSegLib.metrics import evaluate_case  # noqa: E402
from LiverSegLib.pipeline.predictor import Predictor  # noqa: E402
from LiverSegLib.training import release_weights as rw  # noqa: E402

TOLERANCE = 0.005


def run(release_dir: Path, case: str, floor: float | None) -> dict:
    model = rw.fold_model(release_dir / case, f"fold-{case}")
    if any(s is not None for s in model.fine.spacing_xyz[:2]):
        raise SystemExit(f"{release_dir / case}: the fine stage runs on a fixed {model.fine.spacing_xyz} grid; a "
                         "floor changes nothing there (see the docstring)")
    model = replace(model, cascade=replace(model.cascade, fine_inplane_mm=None, fine_inplane_floor_mm=floor))
    ct, label = load_case(case)
    predictor = Predictor(model, device="cpu")
    t0 = time.perf_counter()
    result = predictor.predict(ct)
    total = time.perf_counter() - t0
    scores = evaluate_case(result.labelmap.array_zyx, label.array_zyx, tuple(ct.spacing_xyz[::-1]))
    return {"case": case, "floor_mm": floor, "spacing_xyz": list(ct.spacing_xyz), "seconds": round(total, 2),
            "fine_s": round(result.timings_s["fine"], 2), "liver_dice": scores["liver_dice"],
            "lesion_dice": scores["lesion_dice"] if scores.get("n_ref_lesions") else float("nan"),
            "lesion_recall": scores.get("lesion_recall") if scores.get("n_ref_lesions") else float("nan"),
            "lesion_fp": scores.get("lesion_fp"),
            "n_pred_lesions": scores.get("n_pred_lesions")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--release-dir", type=Path, required=True)
    p.add_argument("--floors", nargs="+", default=["none", "0.8", "1.0"])
    p.add_argument("--cases", nargs="+", default=list(rw.EVAL_CASES))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fine_grid")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    floors = [None if f == "none" else float(f) for f in args.floors]
    rows = [run(args.release_dir, case, floor) for case in args.cases for floor in floors]
    native = {r["case"]: r for r in rows if r["floor_mm"] is None}
    lines = ["# Fine-stage in-plane floor: leave-one-out accuracy and time", "",
             f"- Command: `python benchmarks/fine_grid.py --release-dir {args.release_dir} --floors "
             f"{' '.join(args.floors)} --threads {args.threads}`",
             f"- Date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}",
             f"- Machine: {platform.node()}, {os.cpu_count()} CPUs, torch {torch.__version__} with {args.threads} "
             "thread(s); other jobs may have shared the machine: times are indicative",
             f"- Rule: a floor is acceptable when no case loses more than {TOLERANCE} liver or lesion Dice against "
             "native (lesion Dice only where the reference has lesions: \"-\" otherwise).", "",
             "| case | in-plane mm | floor mm | liver Dice | d liver | lesion Dice | d lesion | lesion recall | "
             "FP lesions | fine s | total s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    verdict: dict[str, bool] = {}
    for r in rows:
        n = native.get(r["case"])
        d_liver = r["liver_dice"] - n["liver_dice"] if n else float("nan")
        d_lesion = (r["lesion_dice"] - n["lesion_dice"]) if n and r["lesion_dice"] == r["lesion_dice"] else 0.0
        key = "none" if r["floor_mm"] is None else str(r["floor_mm"])
        verdict[key] = verdict.get(key, True) and d_liver >= -TOLERANCE and d_lesion >= -TOLERANCE
        lesion = "-" if r["lesion_dice"] != r["lesion_dice"] else f"{r['lesion_dice']:.3f}"
        recall = "-" if r["lesion_recall"] != r["lesion_recall"] else f"{r['lesion_recall']:.2f}"
        lines.append(f"| {r['case']} | {r['spacing_xyz'][0]:.2f} | {key} | {r['liver_dice']:.4f} | {d_liver:+.4f} | "
                     f"{lesion} | {d_lesion:+.4f} | {recall} | {r['lesion_fp']:.0f} | {r['fine_s']:.1f} | "
                     f"{r['seconds']:.1f} |")
    lines += ["", "| floor | acceptable |", "|---|---|"] + [f"| {k} | {'yes' if v else 'NO'} |"
                                                           for k, v in verdict.items()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1, default=float) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
