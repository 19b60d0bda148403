"""The CPU runtimes side by side on real CTs: eager torch (the reference), ONNX Runtime, OpenVINO fp32 / bf16.

    .venv/bin/python benchmarks/runtimes.py ircadb1_19 lits117 ts_example_ct ts_example_dicom \\
        ../shared/data/hcc_tace_unlabelled/*.nii.gz [--model han-liver] [--threads 2] [--repeat 2] \\
        [--runtimes torch:fp32 onnxruntime:fp32 openvino:fp32 openvino:bf16] [--out benchmarks/results/runtimes]

For each CT and runtime, in one process: ``Predictor.predict`` per stage (median of ``--repeat`` warm runs after
one cold run), and the labels against torch float32's: Dice of the liver (label 1 + 2) and of the lesions
(label 2), and the count of lesion components. The issue's rule: a runtime/precision is acceptable where every
label stays within Dice 0.995 of float32 on every real case. Writes ``<out>.json`` and ``<out>.md``.
A harness, not a test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from LiverSegLib.data import samples  # noqa: E402
from LiverSegLib.io import read_volume  # noqa: E402
from LiverSegLib.pipeline.predictor import Predictor  # noqa: E402

STAGES = ("prepare", "coarse", "box", "fine", "post")


def load(arg: str):
    if Path(arg).exists():
        return Path(arg).name.split(".")[0], read_volume(arg)
    return arg, samples.load_case(arg)[0]


def dice(a: np.ndarray, b: np.ndarray) -> float | None:
    total = int(a.sum()) + int(b.sum())
    return None if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ct", nargs="+")
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--repeat", type=int, default=2, help="warm runs per CT and runtime (after one cold run)")
    ap.add_argument("--runtimes", nargs="+",
                    default=["torch:fp32", "onnxruntime:fp32", "openvino:fp32", "openvino:bf16"])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "runtimes"))
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    predictors = {}
    for spec in args.runtimes:
        runtime, precision = spec.split(":")
        t0 = time.perf_counter()
        predictors[spec] = Predictor(args.model, device="cpu", runtime=runtime, precision=precision,
                                     threads=args.threads)
        print(f"{spec}: loaded in {time.perf_counter() - t0:.2f} s, runs {predictors[spec].runtimes}", flush=True)
    rows = []
    for arg in args.ct:
        name, volume = load(arg)
        reference = None
        for spec, predictor in predictors.items():
            times = []
            for _ in range(args.repeat + 1):
                t0 = time.perf_counter()
                result = predictor.predict(volume)
                times.append({"total": time.perf_counter() - t0, **result.timings_s})
            warm = times[1:] or times
            labels = np.asarray(result.labelmap.array_zyx)
            if reference is None:
                reference = labels
            row = {"ct": name, "size": "x".join(str(s) for s in labels.shape[::-1]), "runtime": spec,
                   "actual": " / ".join(sorted(set(predictor.runtimes.values()))),
                   "total_s": statistics.median(t["total"] for t in warm), "cold_s": times[0]["total"],
                   **{f"{k}_s": statistics.median(t.get(k, 0.0) for t in warm) for k in STAGES},
                   "liver_dice_vs_ref": dice(reference > 0, labels > 0),
                   "lesion_dice_vs_ref": dice(reference == 2, labels == 2),
                   "lesions": len(result.lesions), "liver_ml": round(result.liver_volume_ml, 1)}
            rows.append(row)
            print(json.dumps(row, default=float), flush=True)
    md = table(rows, args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps({"rows": rows, "machine": machine(args.threads)}, indent=1))
    Path(args.out + ".md").write_text(md)
    print(md)
    return 0


def machine(threads: int) -> dict:
    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name"))
    except (OSError, StopIteration):
        cpu = cpu or "unknown CPU"
    return {"cpu": cpu, "usable_cpus": len(os.sched_getaffinity(0)), "threads": threads,
            "torch": torch.__version__, "load_average": os.getloadavg()[0],
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def _f(v, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def table(rows: list[dict], args) -> str:
    m = machine(args.threads)
    out = [f"# LiverSeg CPU runtimes, {m['date']}", "",
           f"{m['cpu']}, {m['usable_cpus']} usable CPUs, {m['threads']} threads, torch {m['torch']}, "
           f"load average {m['load_average']:.1f} at the end; median of {args.repeat} warm run(s) after a cold one; "
           "Dice of each runtime's labels against the first runtime's (torch float32).", "",
           "| CT | size xyz | runtime | runs as | predict s | coarse s | fine s | cold s | liver Dice vs fp32 | "
           "lesion Dice vs fp32 | lesions | liver mL |",
           "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['ct']} | {r['size']} | {r['runtime']} | {r['actual']} | {_f(r['total_s'])} | "
                   f"{_f(r['coarse_s'])} | {_f(r['fine_s'])} | {_f(r['cold_s'])} | {_f(r['liver_dice_vs_ref'], 4)} | "
                   f"{_f(r['lesion_dice_vs_ref'], 4)} | {r['lesions']} | {r['liver_ml']} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
