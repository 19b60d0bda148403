"""``liverseg demo``: fetch a real, permissively licensed CT and segment it with the shipped model.

The CT is TotalSegmentator's example abdomen CT (Apache-2.0), fetched with pip and verified by sha256 into the
LiverSeg cache; its TotalSegmentator liver label (a prediction, not a manual reference) is used to print a Dice.
"""

from __future__ import annotations

import argparse

from LiverSegLib.config import DEVICES, SURFACE_FORMATS

__all__ = ["add_parser", "run"]

CT_MEMBER = "tests/reference_files/example_ct.nii.gz"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="fetch a real sample CT and segment it with the shipped model",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", default="demo_output", help="output folder (default: demo_output)")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--surfaces", choices=SURFACE_FORMATS, default="stl", help="surface format (default stl)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from LiverSegLib.cli.segment_cmd import segment_and_report
    from LiverSegLib.data.samples import fetch_source, load_case
    from LiverSegLib.runs import SegmentOptions

    options = SegmentOptions(device=args.device, surfaces=args.surfaces, overwrite=args.overwrite)
    ct_path = fetch_source("totalsegmentator") / CT_MEMBER
    print(f"sample CT: {ct_path} (TotalSegmentator example, Apache-2.0)")
    code = segment_and_report(ct_path, args.output, options)
    if code:
        return code
    from pathlib import Path

    from LiverSegLib.io import read_volume
    from LiverSegLib.metrics import evaluate_case

    ct, reference = load_case("ts_example_ct")
    [seg_file] = Path(args.output).glob("segmentation.*")
    pred = read_volume(seg_file)
    scores = evaluate_case(pred.array_zyx, reference.array_zyx, ct.spacing_xyz[::-1])
    # the shipped models were trained on this CT: the number shows the run worked, not how well the model
    # generalises (the model card's leave-one-out table does)
    print(f"liver Dice against TotalSegmentator's liver label: {scores['liver_dice']:.3f} "
          f"(ASSD {scores['liver_assd']:.1f} mm; in-sample: this CT is in the shipped model's training data); "
          f"open {args.output}/overview.png")
    return 0
