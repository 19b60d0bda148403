"""``liverseg segment``: one CT in, labelmap + lesion table + summary + picture (+ surfaces) out."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from LiverSegLib.errors import InputError, LiverSegError, ModelError

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment liver and liver lesions in one CT",
                       description="Segment liver and liver lesions in a CT (NIfTI/NRRD/MHA file or DICOM folder).")
    p.add_argument("input", help="CT volume file or DICOM series folder")
    p.add_argument("-o", "--output", required=True, help="output folder (must be new or empty unless --overwrite)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", help="model id from 'liverseg models list' (default: the catalogue's default)")
    which.add_argument("--model-file", help="a LiverSeg checkpoint file to use instead of the catalogue")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run (default auto)")
    p.add_argument("--lesion-threshold", type=float, default=None,
                   help="drop a lesion whose maximum probability is below this (default from the model: 0.8)")
    p.add_argument("--quick", action="store_true",
                   help="run both stages on a 3 mm grid: much faster on a slow CPU, coarser boundaries")
    p.add_argument("--surfaces", choices=["stl", "obj"], help="also write closed liver/lesion surfaces (LPS, mm)")
    p.add_argument("--progress", choices=["bar", "json", "none"], default="bar",
                   help="bar on stderr (default), one JSON object per line on stdout, or nothing")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results in the output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from LiverSegLib.cli.progress import make_reporter

    reporter = make_reporter(args.progress)
    try:
        summary = _segment(args, reporter)
    except LiverSegError as exc:
        reporter.error(" ".join(str(exc).split()), 2 if isinstance(exc, InputError) else 1)
        raise
    except Exception as exc:
        reporter.error(f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())}", 1)
        raise
    reporter.done(summary)
    if args.progress != "json":
        print(_human_summary(summary, Path(args.output)))
    return 0


def _segment(args: argparse.Namespace, reporter) -> dict:
    if args.lesion_threshold is not None and not 0.0 <= args.lesion_threshold <= 1.0:
        raise InputError(f"--lesion-threshold must be between 0 and 1, got {args.lesion_threshold}")
    from LiverSegLib.io import read_volume
    from LiverSegLib.outputs import check_output_dir, write_case_outputs

    outdir = Path(args.output)
    check_output_dir(outdir, args.overwrite)  # before any work: never compute what cannot be written
    _check_model_choice(args)  # likewise, before reading what may be a large series
    t0 = time.perf_counter()
    reporter("read", 0.0)
    volume = read_volume(args.input)
    read_s = time.perf_counter() - t0
    reporter("read", 1.0)

    from LiverSegLib.pipeline.predictor import Predictor

    t0 = time.perf_counter()
    predictor = (Predictor.from_checkpoint(args.model_file, device=args.device) if args.model_file
                 else Predictor(args.model, device=args.device))
    load_s = time.perf_counter() - t0
    result = predictor.predict(volume, progress=reporter, lesion_threshold=args.lesion_threshold,
                               quick=args.quick)
    result.timings_s = {"read": read_s, "load_model": load_s, **result.timings_s}
    for warning in result.warnings:
        reporter.log(f"warning: {warning}")

    t0 = time.perf_counter()
    reporter("write", 0.0)
    extra = {"input": {"path": str(Path(args.input).resolve()), "format": volume.metadata.get("format"),
                       "size_xyz": list(volume.shape_xyz), "spacing_xyz": list(volume.spacing_xyz)}}
    paths = write_case_outputs(result, volume, outdir, surfaces=args.surfaces, overwrite=args.overwrite,
                               extra_summary=extra)
    try:
        reporter("write", 1.0)
        summary = result.summary()
        summary["timings_s"]["write"] = round(time.perf_counter() - t0, 4)
        _record_write_time(Path(paths["summary"]), summary["timings_s"]["write"])
        summary["outputs"] = {k: [str(p) for p in v] if isinstance(v, list) else str(v) for k, v in paths.items()}
    except KeyboardInterrupt as exc:  # the results are complete and in place: say so instead of "nothing written"
        exc.liverseg_message = f"interrupted after the complete results were written to {outdir}"
        raise
    return summary


def _check_model_choice(args: argparse.Namespace) -> None:
    """Refuse a missing ``--model-file`` or an unknown ``--model`` id early; needs neither torch nor the input."""
    if args.model_file:
        if not Path(args.model_file).expanduser().is_file():
            raise ModelError(f"model file not found: {args.model_file}")
        return
    from LiverSegLib.registry import load_registry

    load_registry().get(args.model)


def _record_write_time(summary_path: Path, seconds: float) -> None:
    """Add the write stage's time to summary.json, which is itself written during that stage.

    The file is replaced atomically (temporary file in the same folder, then ``os.replace``), so a reader sees
    either the summary without ``timings_s.write`` or the complete one.
    """
    data = json.loads(summary_path.read_text(encoding="utf-8"))
    data.setdefault("timings_s", {})["write"] = seconds
    tmp = summary_path.with_name(f".{summary_path.name}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, summary_path)
    finally:
        tmp.unlink(missing_ok=True)


def _human_summary(summary: dict, outdir: Path) -> str:
    t = summary["timings_s"]
    total = sum(v for v in t.values())
    lines = [
        f"liver {summary['liver_volume_ml']:.1f} mL, {summary['lesion_count']} lesion(s) "
        f"{summary['lesion_volume_ml']:.1f} mL (tumour burden {summary['tumour_burden_percent']:.2f} %)",
        f"model {summary['model']['id']} {summary['model']['version']}, {total:.1f} s "
        f"({', '.join(f'{k} {v:.1f}' for k, v in t.items())})",
        f"results in {outdir}",
    ]
    return "\n".join(lines)
