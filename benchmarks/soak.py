"""Soak test, run on demand (not in CI): many segmentations in one process must not grow its memory.

A console batch in Slicer (``LiverSegLogic.processFolder`` / the in-process runner) keeps one Python process and one
loaded model for hours; a leak of a few MB per case would end it. This runs ``--runs`` consecutive segmentations
the way that batch does (read the file, ``InProcessRunner.run``, write the results to a fresh folder, delete it),
samples the resident memory (RSS) after each, and reports whether it stays flat: every run after the first
``--warmup`` within ``--tolerance`` (10 %) of the RSS at the end of the warm-up.

Usage::

    python benchmarks/soak.py                                   # 50 runs on the TotalSegmentator example CT
    python benchmarks/soak.py CT.nii.gz --runs 100 --device cuda --out benchmarks/results/soak_gpu

Writes ``OUT.json`` (every sample) and ``OUT.png`` (the RSS curve); exit code 0 when flat, 1 when not.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "LiverSeg")]


def rss_mb() -> float:
    """Current resident set size of this process in MB (Linux /proc; psutil elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _input_file(ct: str, work: Path) -> Path:
    """A CT file path; a sample case name is written to a NIfTI file first (each run then reads a real file)."""
    if Path(ct).exists():
        return Path(ct)
    from LiverSegLib.data.samples import load_case
    from LiverSegLib.io import write_volume

    volume, _ = load_case(ct)
    return write_volume(volume, work / f"{ct}.nii.gz")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ct", nargs="?", default="ts_example_ct", help="CT file/folder or sample case name")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5, help="runs before the baseline is taken")
    p.add_argument("--tolerance", type=float, default=0.10, help="allowed growth over the baseline (0.10 = 10 %%)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", help="model id (default: the catalogue's default)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "soak")
    args = p.parse_args(argv)

    from LiverSegSlicer.runners import InProcessRunner, RunOptions

    from LiverSegLib.io import read_volume
    from LiverSegLib.outputs.writer import write_case_outputs

    work = Path(tempfile.mkdtemp(prefix="liverseg-soak-"))
    try:
        path = _input_file(args.ct, work)
        runner = InProcessRunner()
        options = RunOptions(model=args.model, device=args.device)
        samples = [{"run": 0, "rss_mb": round(rss_mb(), 1), "seconds": 0.0}]
        for run in range(1, args.runs + 1):
            t0 = time.perf_counter()
            volume = read_volume(path)
            result = runner.run(volume, options)
            out = work / f"case{run}"
            write_case_outputs(result, volume, out)
            shutil.rmtree(out)
            del volume, result
            samples.append({"run": run, "rss_mb": round(rss_mb(), 1), "seconds": round(time.perf_counter() - t0, 2)})
            print(f"run {run:3d}: RSS {samples[-1]['rss_mb']:.0f} MB, {samples[-1]['seconds']:.1f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    baseline = samples[min(args.warmup, args.runs)]["rss_mb"]
    later = [s["rss_mb"] for s in samples[args.warmup + 1:]]
    worst = max(later) if later else baseline
    flat = worst <= baseline * (1.0 + args.tolerance)
    report = {"ct": str(args.ct), "device": args.device, "runs": args.runs, "warmup": args.warmup,
              "baseline_rss_mb": baseline, "max_rss_after_warmup_mb": worst,
              "growth_percent": round(100.0 * (worst / baseline - 1.0), 2), "flat": flat, "samples": samples,
              "date": time.strftime("%Y-%m-%d %H:%M")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    _plot(samples, baseline, args, args.out.with_suffix(".png"))
    print(f"RSS after warm-up {baseline:.0f} MB, highest later {worst:.0f} MB ({report['growth_percent']:+.1f} %): "
          + ("flat" if flat else f"GROWS beyond {100 * args.tolerance:.0f} %"))
    return 0 if flat else 1


def _plot(samples: list[dict], baseline: float, args: argparse.Namespace, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot([s["run"] for s in samples], [s["rss_mb"] for s in samples], marker=".", lw=1)
    ax.axhline(baseline * (1 + args.tolerance), color="tab:red", ls="--", lw=0.8,
               label=f"+{100 * args.tolerance:.0f} % of the RSS after {args.warmup} runs")
    ax.set_xlabel("segmentation run (one process)")
    ax.set_ylabel("resident memory (MB)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Soak: {args.runs} runs on {Path(str(args.ct)).name}, {args.device}", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
