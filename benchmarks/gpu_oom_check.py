"""A real CUDA out-of-memory and its fallback: the capped run's labels must equal the uncapped run's.

    python benchmarks/gpu_oom_check.py CT [--fraction 0.02] [--model han-liver]

Runs the shipped cascade on CT on the GPU without a limit, then again in a fresh predictor after
``torch.cuda.set_per_process_memory_fraction(FRACTION)`` (a small share of the card, so that the default batch
cannot fit), and prints one JSON line: both runs' times, peak VRAM, the fallback warnings and whether the two
labelmaps are identical. Exit code 1 when they differ, or when the cap did not cause an out-of-memory (then the
fallback was not exercised: lower --fraction). Needs a CUDA device (exit 2 without one). A harness, not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from LiverSegLib.io import read_volume  # noqa: E402
from LiverSegLib.pipeline.predictor import Predictor  # noqa: E402


def _run(ct, model: str | None) -> tuple[np.ndarray, dict]:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    predictor = Predictor(model, device="cuda")
    t0 = time.perf_counter()
    result = predictor.predict(ct)
    torch.cuda.synchronize()
    return np.asarray(result.labelmap.array_zyx), {
        "seconds": round(time.perf_counter() - t0, 3), "timings_s": result.timings_s,
        "peak_vram_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3), "warnings": result.warnings}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ct")
    p.add_argument("--fraction", type=float, default=0.02)
    p.add_argument("--model")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    ct = read_volume(args.ct)
    free, total = torch.cuda.mem_get_info()
    reference, plain = _run(ct, args.model)
    torch.cuda.set_per_process_memory_fraction(args.fraction)
    capped_labels, capped = _run(ct, args.model)
    torch.cuda.set_per_process_memory_fraction(1.0)
    fell_back = any("out of memory" in w.lower() or "memory" in w.lower() for w in capped["warnings"])
    same = bool(np.array_equal(reference, capped_labels))
    print(json.dumps({"ct": args.ct, "card_gb": round(total / 2**30, 1), "fraction": args.fraction,
                      "uncapped": plain, "capped": capped, "fallback_exercised": fell_back,
                      "labels_identical": same,
                      "differing_voxels": int(np.count_nonzero(reference != capped_labels))}, default=float))
    return 0 if same and fell_back else 1


if __name__ == "__main__":
    raise SystemExit(main())
