"""``liverseg segment``: one CT (or, with ``--batch``, a folder of CTs) in; labelmap, lesion table, summary,
picture (and surfaces) out. A thin translation of the arguments to :mod:`LiverSegLib.runs`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from LiverSegLib.config import DEVICES, PRECISIONS, RUNTIMES, SURFACE_FORMATS
from LiverSegLib.errors import InputError, LiverSegError

__all__ = ["add_parser", "run", "segment_and_report"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment liver and liver lesions in one CT",
                       description="Segment liver and liver lesions in a CT (NIfTI/NRRD/MHA file or DICOM folder).")
    p.add_argument("input", nargs="?", help="CT volume file or DICOM series folder; with --batch, a folder of cases "
                                            "(none with --dicomweb)")
    p.add_argument("-o", "--output", required=True,
                   help="output folder (new or empty, or earlier LiverSeg results with --overwrite); with --batch, "
                        "one subfolder per case and batch_summary.csv")
    p.add_argument("--batch", action="store_true",
                   help="INPUT is a folder of cases: every CT file and DICOM series folder directly inside it is "
                        "segmented into OUTPUT/<case>/; cases with results are skipped (resume), a failing case is "
                        "reported and skipped")
    p.add_argument("--pattern", help="with --batch: only inputs whose name matches this (e.g. '*_ct.nii.gz')")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", help="model id from 'liverseg models list' (default: the catalogue's default)")
    which.add_argument("--model-file", help="a LiverSeg checkpoint file to use instead of the catalogue")
    p.add_argument("--device", default="auto", choices=DEVICES, help="where to run (default auto)")
    p.add_argument("--runtime", default="auto", choices=RUNTIMES,
                   help="what executes the networks on the CPU (default auto: OpenVINO where the model ships an ONNX "
                        "export, else torch; the GPU always uses torch)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="arithmetic of the ONNX runtimes (default auto: bfloat16 where the CPU has it natively, "
                        "else float32); fp32 gives torch's float32 results")
    p.add_argument("--lesion-threshold", type=float, default=None,
                   help="drop a lesion whose maximum probability is below this (default: the model's own value, "
                        "cascade.lesion_threshold in models.json)")
    p.add_argument("--quick", action="store_true",
                   help="run both stages on a 3 mm grid: much faster on a slow CPU, coarser boundaries; small "
                        "lesions may be missed or merged, so lesion results can change")
    p.add_argument("--surfaces", choices=SURFACE_FORMATS, help="also write closed liver/lesion surfaces (LPS, mm)")
    p.add_argument("--no-overview", action="store_true", help="do not render overview.png (needs matplotlib)")
    p.add_argument("--dicom-seg", action=argparse.BooleanOptionalAction, default=None,
                   help="write segmentation.dcm (DICOM SEG) and measurements.dcm (TID 1500 SR); default: for DICOM "
                        "input; --dicom-seg for any input (the CT is then written as DICOM in ct_dicom/ too)")
    p.add_argument("--series", metavar="UID", help="the series to segment in a DICOM folder (or --dicomweb study) "
                                                   "holding several")
    p.add_argument("--dicomweb", metavar="URL", help="pull the CT from this DICOMweb server (its DICOMweb root, e.g. "
                                                     "http://pacs:8042/dicom-web) instead of INPUT; needs --study")
    p.add_argument("--study", metavar="UID", help="with --dicomweb: the Study Instance UID")
    p.add_argument("--send", action="store_true", help="with --dicomweb: store segmentation.dcm and measurements.dcm "
                                                       "back into the study (STOW-RS)")
    p.add_argument("--progress", choices=["bar", "json", "none"], default="bar",
                   help="bar on stderr (default), one JSON object per line on stdout, or nothing")
    p.add_argument("--overwrite", action="store_true",
                   help="replace earlier LiverSeg results in the output folder (a folder with other files is never "
                        "touched); with --batch, redo cases that have results")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from LiverSegLib.cli.progress import make_reporter
    from LiverSegLib.runs import SegmentOptions, segment_file

    reporter = make_reporter(args.progress)

    def work() -> dict | None:
        if args.pattern and not args.batch:
            raise InputError("--pattern only applies with --batch")
        _check_source(args)
        options = SegmentOptions.from_cli(args)
        if args.dicomweb:
            from LiverSegLib.runs.dicomweb import segment_from_dicomweb

            return segment_from_dicomweb(args.dicomweb, args.study, args.output, options, series_uid=args.series,
                                         send=args.send, progress=reporter, log=reporter.log)
        if args.batch:
            return _batch(Path(args.input), Path(args.output), options, args.pattern, args.progress, reporter)
        return segment_file(args.input, args.output, options, progress=reporter, log=reporter.log)

    return _reported(reporter, work, Path(args.output), args.progress)


def _check_source(args: argparse.Namespace) -> None:
    """Exactly one source: INPUT, or --dicomweb with --study; --study/--send only with --dicomweb."""
    if args.dicomweb:
        if args.input:
            raise InputError("give INPUT or --dicomweb, not both")
        if not args.study:
            raise InputError("--dicomweb needs --study UID (the study to pull the CT series from)")
        if args.batch:
            raise InputError("--batch reads a folder of cases; it cannot be combined with --dicomweb")
    else:
        if not args.input:
            raise InputError("give the CT to segment (a file or DICOM folder), or --dicomweb URL --study UID")
        for flag, value in (("--study", args.study), ("--send", args.send)):
            if value:
                raise InputError(f"{flag} only applies with --dicomweb")


def segment_and_report(input_path: str | Path, output: str | Path, options, progress: str = "bar") -> int:
    """Segment one case with the CLI's progress display, error lines and closing summary (also ``demo``'s)."""
    from LiverSegLib.cli.progress import make_reporter
    from LiverSegLib.runs import segment_file

    reporter = make_reporter(progress)
    return _reported(reporter, lambda: segment_file(input_path, output, options, progress=reporter,
                                                    log=reporter.log), Path(output), progress)


def _reported(reporter, work, output: Path, progress: str) -> int:
    """Run ``work``; its error becomes the reporter's one line (JSON event or stderr) before it propagates."""
    try:
        summary = work()
    except LiverSegError as exc:
        reporter.error(" ".join(str(exc).split()), 2 if isinstance(exc, InputError) else 1)
        raise
    except Exception as exc:
        reporter.error(f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())}", 1)
        raise
    if summary is None:  # a batch: its lines and closing count are printed
        return 0
    reporter.done(summary)
    if progress != "json":
        print(_human_summary(summary, output))
    return 0


def _batch(source: Path, output: Path, options, pattern: str | None, progress: str, reporter) -> None:
    from LiverSegLib.runs import segment_folder

    if not source.is_dir():
        raise InputError(f"--batch needs a folder of cases, got {source}")
    # one line per case: a JSON log event for front ends, plain stdout otherwise
    records = segment_folder(source, output, options, pattern=pattern,
                             log=reporter.log if progress == "json" else print)
    failed = [r for r in records if r.status == "failed"]
    done = sum(r.status == "done" for r in records)
    skipped = sum(r.status == "skipped" for r in records)
    print(f"{done} done, {skipped} skipped, {len(failed)} failed of {len(records)} case(s); table in "
          f"{output / 'batch_summary.csv'}", file=sys.stderr if progress == "json" else sys.stdout)
    if failed:
        raise (InputError if all(r.exit_code == 2 for r in failed) else LiverSegError)(
            f"{len(failed)} of {len(records)} case(s) failed (see {output / 'batch_summary.csv'})")
    return None


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
