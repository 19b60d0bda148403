"""Leave-one-out accuracy of the shipped Han cascade on the real labelled CTs, plus overviews of unlabelled series.

    .venv/bin/python benchmarks/accuracy.py --release-dir $LIVERSEG_HOME/release \
        [--cases ircadb1_19 lits117 ...] [--rescore] [--baseline han-demo] [--overviews DIR] [--series HCC_006_s103]
        [--no-overviews] [--threads N] [--out benchmarks/results/accuracy.md]

Each fold ``DIR/<case>/`` holds the cascade that ``LiverSegLib.training.release_weights --leave-out <case>`` trained
without that case in any form (its CT and label are not among the real cases, and the synthetic-pool entries painted
from its masks are dropped). Its score is ``DIR/<case>/loo_<case>.json`` (as written by ``release_weights``); it is
computed here, and written there, when missing or with ``--rescore``. A fold without both weight files is a "not
trained" row. Each fold's prediction is also drawn as ``loo_<case>.png`` (predicted again when that PNG is missing).

``--baseline han-demo`` scores the catalogue model on the same cases in a second table; it saw every case except
ircadb1_19 in training, so those rows are marked in-sample. ``--overviews`` (default ``DIR/all``, the shipped model)
segments every unlabelled series of ``../shared/data/hcc_tace_unlabelled`` and draws ``overview_<series>.png``.
Writes ``<out>.md`` and ``<out>.json`` (raw numbers). A harness, not a test.

``--cascade KEY=VALUE ...`` varies the cascade rules of every fold (an ablation, e.g. ``coarse_liver_weight=0``
``fine_inplane_mm=null fine_inplane_floor_mm=1.0``): every case is predicted again, and neither the folds'
``loo_<case>.json`` nor the pictures are written, so the shipped rules' results stay as they were. Use another
``--out`` and ``--no-overviews``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from LiverSegLib.config import CascadeConfig, ModelConfig  # noqa: E402
from LiverSegLib.data.samples import case_info, load_case, shared_data_dir  # noqa: E402
from LiverSegLib.metrics import evaluate_case  # noqa: E402
from LiverSegLib.outputs.overview import render_overview  # noqa: E402
from LiverSegLib.pipeline.predictor import Predictor  # noqa: E402
from LiverSegLib.training import release_weights as rw  # noqa: E402
from LiverSegLib.types import SegmentationResult, Volume  # noqa: E402

WEIGHT_FILES = ("han_liver_coarse.pt", "han_liver_fine.pt")
#: Cases in han-demo's training set (Resources/models.json): its scores there are not held-out numbers.
HAN_DEMO_IN_SAMPLE = frozenset({"ts_example_ct", "lits117", "ts_example_dicom"})
#: Cases whose reference has no lesion: only false positives can be counted there.
LESION_FREE = ("ts_example_ct", "ts_example_dicom")
LIVER_DICE_TARGET, IRCAD_LESION_TARGET, MAX_FP_LESIONS = 0.92, 0.5, 2


# ------------------------------------------------------------------------------------------------ running models
#: ``--cascade`` overrides of the folds' cascade rules (empty: the shipped rules).
CASCADE_OVERRIDES: dict[str, Any] = {}


def fold_model(weights_dir: Path, name: str) -> ModelConfig:
    """The cascade of a ``release_weights`` output folder, configured exactly as ``release_weights.score_case``
    (with the ``--cascade`` overrides, if any)."""
    from dataclasses import replace

    model = rw.fold_model(weights_dir, name)
    if CASCADE_OVERRIDES:
        model = replace(model, cascade=CascadeConfig.from_dict({**model.cascade.to_dict(), **CASCADE_OVERRIDES}))
    return model


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["coarse_liver_weight=0", "fine_inplane_mm=null"]`` -> ``{"coarse_liver_weight": 0, "fine_inplane_mm":
    None}`` (values are JSON); an unknown rule name stops the run."""
    known = set(CascadeConfig().to_dict()) | {"fine_inplane_floor_mm", "fine_inplane_mm", "coarse_liver_weight",
                                              "coarse_neck_mm", "coarse_neck_min_ml", "coarse_member_union"}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise SystemExit(f"--cascade {item!r}: expected RULE=VALUE with RULE one of {sorted(known)}")
        out[key] = json.loads(value)
    return out


def is_trained(weights_dir: Path) -> bool:
    """Both stages' weights are there (a fold still training has at most the coarse one)."""
    return all((Path(weights_dir) / f).is_file() for f in WEIGHT_FILES)


def predict_and_score(predictor: Predictor, case: str) -> tuple[dict[str, Any], Volume, SegmentationResult]:
    """``release_weights.score_case``'s dict (plus ``box_note``) for ``case``, with the CT and the result.

    Reimplemented rather than called because the overview PNG needs the prediction, which ``score_case`` drops;
    the keys and the timing (``Predictor.predict`` alone) are the same.
    """
    ct, label = load_case(case)
    t = time.perf_counter()
    result = predictor.predict(ct)
    seconds = time.perf_counter() - t
    scores = evaluate_case(result.labelmap.array_zyx, label.array_zyx, tuple(ct.spacing_xyz[::-1]))
    return ({"case": case, "seconds": round(seconds, 2), "box_fallback": result.details.get("box_fallback"),
             "warnings": list(result.warnings), **scores, "box_note": result.details.get("box_note")}, ct, result)


def draw(ct: Volume, result: SegmentationResult, path: Path, title: str) -> None:
    """The project's overview PNG, with the same legend facts as ``outputs/writer.py`` gives it."""
    seg = result.labelmap.with_array(np.asarray(result.labelmap.array_zyx, dtype=np.uint8))
    render_overview(ct, seg, path, title=title, liver_volume_ml=result.liver_volume_ml,
                    lesion_count=len(result.lesions))


def loo_rows(release_dir: Path, cases: list[str], rescore: bool, results: Path) -> list[dict[str, Any]]:
    """One row per case: the fold's cached or fresh scores, or a status when it cannot be scored."""
    rows = []
    for case in cases:
        fold, png = release_dir / case, results / f"loo_{case}.png"
        cached = fold / f"loo_{case}.json"
        if not is_trained(fold):
            rows.append({"case": case, "status": "not trained"})
            print(f"{case}: not trained ({fold} lacks {' or '.join(WEIGHT_FILES)})", flush=True)
            continue
        ablation = bool(CASCADE_OVERRIDES)
        row = json.loads(cached.read_text()) if cached.is_file() and not (rescore or ablation) else None
        source = "cached" if row is not None else "scored now"
        if ablation:
            row, _, _ = predict_and_score(Predictor(fold_model(fold, f"loo-{case}"), device="cpu"), case)
        elif row is None or not png.is_file():
            print(f"{case}: predicting with {fold}", flush=True)
            try:
                fresh, ct, result = predict_and_score(Predictor(fold_model(fold, f"loo-{case}"), device="cpu"), case)
            except Exception as exc:  # noqa: BLE001 - a case absent here (shared-only) is a row, not a crash
                rows.append({"case": case, "status": f"not scored: {exc}"})
                continue
            draw(ct, result, png, f"{case}: leave-one-out fold (liver Dice {fresh['liver_dice']:.3f})")
            if row is None:  # a cached score stays authoritative; the prediction was only for the picture
                row = fresh
                cached.write_text(json.dumps({k: v for k, v in fresh.items() if k != "box_note"}, indent=1,
                                             default=float))
        rows.append({**row, "status": "ok", "source": source})
        print(f"{case}: liver Dice {row['liver_dice']:.3f}, {row['seconds']} s", flush=True)
    return rows


def baseline_rows(model_id: str, cases: list[str]) -> list[dict[str, Any]]:
    """The catalogue model ``model_id`` scored on ``cases`` (han-demo's in-sample cases are flagged)."""
    from LiverSegLib.registry import load_registry

    predictor = Predictor(load_registry().get(model_id), device="cpu")
    rows = []
    for case in cases:
        print(f"{case}: predicting with {model_id}", flush=True)
        try:
            scores, _, _ = predict_and_score(predictor, case)
        except Exception as exc:  # noqa: BLE001
            rows.append({"case": case, "status": f"not scored: {exc}"})
            continue
        in_sample = model_id == "han-demo" and case in HAN_DEMO_IN_SAMPLE
        rows.append({**scores, "status": "ok", "in_sample": in_sample})
    return rows


def training_cases(weights_dir: Path) -> set[str]:
    """Every case name the checkpoints in ``weights_dir`` list as training data (ensemble members' too), e.g.
    ``pseudo:HCC_006_s103`` for a pseudo-labelled series."""
    from LiverSegLib.weights import load_checkpoint

    names: set[str] = set()
    for file in WEIGHT_FILES:
        meta = load_checkpoint(weights_dir / file).get("metadata") or {}
        for m in [meta, *meta.get("ensemble_of", [])]:
            names.update(str(c) for c in m.get("cases", []))
    return names


def _seen(row: dict[str, Any]) -> str:
    if row.get("in_training"):
        return "pseudo-labelled in training"
    return "series unseen; its patient's other series in training" if row.get("patient_in_training") else "unseen"


def overview_rows(weights_dir: Path, series: list[str] | None, results: Path) -> list[dict[str, Any]]:
    """Segment the unlabelled HCC-TACE series with ``weights_dir``'s cascade; one PNG and one row per series."""
    from LiverSegLib.training.mask_sources import list_unlabelled_series, read_unlabelled
    from LiverSegLib.training.pseudo_labels import patient_of

    shared = shared_data_dir()
    if shared is None:
        print("overviews skipped: no ../shared/data beside the checkout", flush=True)
        return []
    if not is_trained(weights_dir):
        print(f"overviews skipped: {weights_dir} lacks {' or '.join(WEIGHT_FILES)}", flush=True)
        return []
    paths = [p for p in list_unlabelled_series(shared / "hcc_tace_unlabelled")
             if series is None or p.name.split(".")[0] in series]
    unknown = set(series or ()) - {p.name.split(".")[0] for p in paths}
    if unknown:  # a typo would otherwise give an empty table that looks like a finished run
        print(f"unknown series (not in {shared / 'hcc_tace_unlabelled'}): {', '.join(sorted(unknown))}", flush=True)
    predictor = Predictor(fold_model(weights_dir, weights_dir.name), device="cpu")
    seen = training_cases(weights_dir)
    rows = []
    for path in paths:
        ct = read_unlabelled(path)
        name = str(ct.metadata["series"])
        print(f"{name}: predicting with {weights_dir}", flush=True)
        t = time.perf_counter()
        result = predictor.predict(ct)
        seconds = time.perf_counter() - t
        draw(ct, result, results / f"overview_{name}.png", f"{name} (unlabelled, model {weights_dir.name})")
        rows.append({"series": name, "shape_zyx": list(ct.array_zyx.shape),
                     "spacing_xyz": [round(float(s), 3) for s in ct.spacing_xyz],
                     "liver_l": result.liver_volume_ml / 1000.0, "lesions": len(result.lesions),
                     "lesion_ml": result.lesion_volume_ml, "warnings": list(result.warnings),
                     "seconds": round(seconds, 2), "in_training": f"pseudo:{name}" in seen,
                     "patient_in_training": any(c.startswith(f"pseudo:{patient_of(name)}_") for c in seen)})
    return rows


# ------------------------------------------------------------------------------------------------ markdown
def _num(value: Any, fmt: str) -> str:
    """A table cell: "-" for a missing or NaN value (not computable), "inf" kept visible."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format(value, fmt)


def _cell(text: Any) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def case_table(rows: list[dict[str, Any]], extra_col: str | None = None) -> list[str]:
    """The per-case markdown table; lesion overlap/detection is "-" where the reference has no lesion."""
    head = ["case", "liver Dice", "ASSD mm", "RVD %", "lesion Dice", "lesion recall", "lesion precision",
            "FP lesions", "ref lesions", "pred lesions", "runtime s", "fine box"] + ([extra_col] if extra_col else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['case']} | " + " | ".join([_cell(r["status"])] + [""] * (len(head) - 2)) + " |")
            continue
        # where the reference has no lesion, overlap and detection rates are undefined: only FPs count
        les = [_num(r[k], f) if r["n_ref_lesions"] > 0 else "-"
               for k, f in (("lesion_dice", ".3f"), ("lesion_recall", ".2f"), ("lesion_precision", ".2f"))]
        # a loo_<case>.json written by release_weights records only the fallback, not the box note
        box = r.get("box_fallback") or r.get("box_note") or ("-" if "box_note" in r else "no fallback")
        cells = [r["case"], _num(r["liver_dice"], ".3f"), _num(r["liver_assd"], ".2f"),
                 _num(100 * r["liver_rvd"], "+.1f"), *les, str(r["lesion_fp"]), str(r["n_ref_lesions"]),
                 str(r["n_pred_lesions"]), _num(r["seconds"], ".1f"), _cell(box)]
        if extra_col:
            cells.append("in-sample" if r.get("in_sample") else "unseen")
        lines.append("| " + " | ".join(cells) + " |")
    ok = [r for r in rows if r["status"] == "ok"]
    if ok:
        mean = [_num(float(np.mean([r["liver_dice"] for r in ok])), ".3f"),
                _num(float(np.nanmean([r["liver_assd"] for r in ok])), ".2f")]
        lines.append(f"| **mean of {len(ok)}** | " + " | ".join(mean + [""] * (len(head) - 3)) + " |")
    return lines


def targets(rows: list[dict[str, Any]], cases: list[str]) -> list[tuple[str, str, str]]:
    """The issue's targets on the LOO rows: (target, PASS / FAIL / NOT EVALUATED, the numbers behind it)."""
    by = {r["case"]: r for r in rows if r["status"] == "ok"}
    out = []

    def verdict(scope: list[str], ok_of, fact_of) -> tuple[str, str]:
        done = [c for c in scope if c in by]
        facts = ", ".join(f"{c} {fact_of(by[c])}" for c in done)
        missing = [c for c in scope if c not in by]
        if any(not ok_of(by[c]) for c in done):
            status = "FAIL"
        elif missing or not scope:
            status = "NOT EVALUATED"
        else:
            status = "PASS"
        return status, "; ".join(filter(None, [facts, f"not evaluated: {', '.join(missing)}" if missing else ""]))

    out.append((f"liver Dice >= {LIVER_DICE_TARGET} on every case",
                *verdict(list(rw.EVAL_CASES), lambda r: r["liver_dice"] >= LIVER_DICE_TARGET,
                         lambda r: f"{r['liver_dice']:.3f}")))
    out.append((f"ircadb1_19: lesion recall >= {IRCAD_LESION_TARGET} and lesion Dice >= {IRCAD_LESION_TARGET}",
                *verdict(["ircadb1_19"], lambda r: r["lesion_recall"] >= IRCAD_LESION_TARGET
                         and r["lesion_dice"] >= IRCAD_LESION_TARGET,
                         lambda r: f"recall {r['lesion_recall']:.2f}, Dice {r['lesion_dice']:.3f}")))
    out.append((f"lesion-free cases: at most {MAX_FP_LESIONS} false-positive lesion components",
                *verdict(list(LESION_FREE), lambda r: r["lesion_fp"] <= MAX_FP_LESIONS,
                         lambda r: f"{r['lesion_fp']} FP")))
    if set(cases) != set(rw.EVAL_CASES):
        out.append(("(this run was restricted with --cases)", "", ", ".join(cases)))
    return out


def _machine() -> str:
    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(ROOT), *cmd], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD").strip()
    # the numbers belong to the working tree, which may differ from the commit
    dirty = " + uncommitted changes" if commit and git("status", "--porcelain", "--untracked-files=no").strip() else ""
    return (f"{platform.node()}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
            f"torch {torch.__version__} with {torch.get_num_threads()} threads, Python {platform.python_version()}, "
            f"commit {commit or '?'}{dirty}")


def markdown(args: argparse.Namespace, loo: list[dict], base: list[dict], series: list[dict]) -> str:
    """The whole report."""
    refs = ", ".join(f"{c}: {case_info(c)['label_origin']}" for c in args.cases)
    md = ["# LiverSeg leave-one-out accuracy", "",
          f"- Command: `{' '.join(shlex.quote(a) for a in ['python', *sys.argv])}`",
          f"- Date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
          f"- Machine: {_machine()}",
          f"- Folds: `{args.release_dir}/<case>`, each trained by `release_weights --leave-out <case>`: the fold's "
          "cascade never saw its held-out case, neither its image nor its masks (not among the real training "
          "cases, not in the mask bank, and the synthetic-pool entries painted from its masks are dropped). The "
          "LiTS donor liver bank holds LiTS 0-26 and 48-111, so neither lits117 nor the 3D-IRCADb-derived LiTS "
          "cases 27-47.",
          f"- References: {refs}. TotalSegmentator references are another model's prediction, not manual.",
          "- Metrics: `LiverSegLib.metrics.evaluate_case` (LiTS conventions; liver = liver + lesions). RVD is "
          "signed (positive = over-segmentation). Lesion detection counts a component as found when it overlaps; "
          "\"FP lesions\" are predicted components touching no reference lesion. Lesion Dice/recall/precision are "
          "\"-\" where the reference has no lesion. Runtime: `Predictor.predict` wall time on the CPU when the case "
          "was scored (a cached `loo_<case>.json` keeps its own time, measured at the end of fold training).", "",
          "## Leave-one-out folds", "", *case_table(loo), "",
          "## Targets", "", "| target | result | numbers |", "|---|---|---|",
          *(f"| {t} | {f'**{s}**' if s else ''} | {_cell(n)} |" for t, s, n in targets(loo, args.cases)),
          ""]
    if base:
        md += [f"## Baseline: catalogue model `{args.baseline}` (NOT leave-one-out)", "",
               "han-demo was trained on ts_example_ct, lits117 and ts_example_dicom: its rows for them are "
               "in-sample (seen in training) and overstate its accuracy; only ircadb1_19 is an unseen case.", "",
               *case_table(base, extra_col="seen in training"), ""]
    if series:
        md += [f"## Unlabelled series (HCC-TACE-Seg, no reference): model `{args.overviews}`", "",
               "Overview PNGs: `overview_<series>.png` beside this file. No score is possible: check the pictures. "
               "\"pseudo-labelled in training\": the model's checkpoints list the series as a training case, so its "
               "picture is not an unseen test.", "",
               "| series | shape zyx | spacing xyz mm | liver L | lesions | lesion ml | runtime s | warnings | "
               "seen in training |",
               "|---|---|---|---|---|---|---|---|---|"]
        md += [f"| {r['series']} | {'x'.join(map(str, r['shape_zyx']))} | {'x'.join(map(str, r['spacing_xyz']))} | "
               f"{r['liver_l']:.2f} | {r['lesions']} | {r['lesion_ml']:.1f} | {r['seconds']:.1f} | "
               f"{_cell('; '.join(r['warnings']) or '-')} | "
               f"{_seen(r)} |" for r in series]
        md.append("")
    return "\n".join(md)


# ------------------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--release-dir", required=True, type=Path, help="folder of the folds (<case>/) and all/")
    p.add_argument("--cases", nargs="+", default=list(rw.EVAL_CASES), choices=rw.EVAL_CASES)
    p.add_argument("--rescore", action="store_true", help="predict and score again even where loo_<case>.json is")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/accuracy.md", help="markdown file; the "
                   "JSON goes beside it, the PNGs into its folder")
    p.add_argument("--baseline", default=None, help="also score this catalogue model (e.g. han-demo)")
    p.add_argument("--overviews", type=Path, default=None, help="weights folder for the unlabelled series' "
                   "overviews (default: RELEASE_DIR/all)")
    p.add_argument("--no-overviews", action="store_true", help="skip the unlabelled series")
    p.add_argument("--series", nargs="+", default=None, help="only these unlabelled series (e.g. HCC_006_s103)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--cascade", nargs="+", default=[], metavar="RULE=VALUE",
                   help="vary the folds' cascade rules (ablation; nothing cached is written)")
    args = p.parse_args(argv)
    CASCADE_OVERRIDES.clear()
    CASCADE_OVERRIDES.update(parse_overrides(args.cascade))
    if args.threads:
        torch.set_num_threads(args.threads)
    args.overviews = args.overviews or args.release_dir / "all"
    results = args.out.parent
    results.mkdir(parents=True, exist_ok=True)
    loo = loo_rows(args.release_dir, args.cases, args.rescore, results)
    base = baseline_rows(args.baseline, args.cases) if args.baseline else []
    series = [] if args.no_overviews else overview_rows(args.overviews, args.series, results)
    text = markdown(args, loo, base, series)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"argv": sys.argv, "machine": _machine(), "loo": loo, "baseline": base, "series": series}, indent=1,
        default=float))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
