"""Would int8 keep the labels? The cascade with int8 OpenVINO models against torch float32 on real CTs.

Quantise first (NNCF post-training quantisation, in an environment with ``nncf``; calibration: 32 slice stacks each
from lits117 and ts_example_ct on each stage's grid), e.g.::

    model = openvino.Core().read_model("Resources/weights/han_liver_fine.onnx")
    openvino.save_model(nncf.quantize(model, nncf.Dataset(stacks)), "fine_int8.xml")

then::

    .venv/bin/python benchmarks/int8_check.py --coarse-ir coarse_int8.xml --fine-ir fine_int8.xml CT... [--threads 2]

Prints, per CT, predict seconds of torch float32, OpenVINO float32 and OpenVINO int8, and the int8 labels' liver and
lesion Dice against torch float32 (the issue's rule: within Dice 0.995 on every real case). Not shipped: a harness.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from runtimes import dice, load  # noqa: E402

from LiverSegLib.pipeline import onnx_stage  # noqa: E402
from LiverSegLib.pipeline.predictor import Predictor  # noqa: E402


def _int8_predictor(coarse_ir: Path, fine_ir: Path, threads: int) -> Predictor:
    """OpenVINO float32 stages whose compiled models are swapped for the int8 IRs (same pre/post-processing)."""
    import openvino as ov

    predictor = Predictor("han-liver", device="cpu", runtime="openvino", precision="fp32", threads=threads)
    core = ov.Core()
    for stage, ir in ((predictor.coarse, coarse_ir), (predictor.fine, fine_ir)):
        compiled = core.compile_model(core.read_model(str(ir)), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                                       "INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()

        def run(batch, request=request):
            request.infer({0: batch})
            return request.get_output_tensor(0).data

        assert isinstance(stage, onnx_stage.OnnxStage)
        stage._run, stage.precision = run, "int8"
    return predictor


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ct", nargs="+")
    ap.add_argument("--coarse-ir", type=Path, required=True)
    ap.add_argument("--fine-ir", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    runs = {"torch fp32": Predictor("han-liver", device="cpu", runtime="torch"),
            "openvino fp32": Predictor("han-liver", device="cpu", runtime="openvino", precision="fp32",
                                       threads=args.threads),
            "openvino int8": _int8_predictor(args.coarse_ir, args.fine_ir, args.threads)}
    print("| CT | torch fp32 s | openvino fp32 s | openvino int8 s | int8 liver Dice vs fp32 "
          "| int8 lesion Dice vs fp32 | lesions fp32 / int8 |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for arg in args.ct:
        name, volume = load(arg)
        seconds, labels, lesions = {}, {}, {}
        for key, predictor in runs.items():
            predictor.predict(volume)  # warm
            t0 = time.perf_counter()
            result = predictor.predict(volume)
            seconds[key] = time.perf_counter() - t0
            labels[key] = np.asarray(result.labelmap.array_zyx)
            lesions[key] = len(result.lesions)
        ref, q = labels["torch fp32"], labels["openvino int8"]
        lesion = dice(ref == 2, q == 2)
        print(f"| {name} | {seconds['torch fp32']:.2f} | {seconds['openvino fp32']:.2f} | "
              f"{seconds['openvino int8']:.2f} | {dice(ref > 0, q > 0):.4f} | "
              f"{'-' if lesion is None else f'{lesion:.4f}'} | {lesions['torch fp32']} / {lesions['openvino int8']} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
