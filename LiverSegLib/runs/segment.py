"""Segment one case: a CT file or DICOM folder in, the complete result folder out.

:func:`segment_file` is the one place that reads a case, runs the model with :class:`SegmentOptions` and writes
the results; ``liverseg segment``, ``liverseg demo``, the folder batch and Slicer's console batch all call it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from LiverSegLib.errors import ModelError
from LiverSegLib.runs.options import SegmentOptions

__all__ = ["segment_file", "check_model_choice", "update_summary"]


def check_model_choice(options: SegmentOptions) -> None:
    """Refuse a missing model file or an unknown model id early; needs neither torch nor the input."""
    if options.model_file:
        if not Path(options.model_file).expanduser().is_file():
            raise ModelError(f"model file not found: {options.model_file}")
        return
    from LiverSegLib.registry import load_registry

    load_registry().get(options.model)


def update_summary(summary_path: Path, updates: dict) -> None:
    """Merge ``updates`` into summary.json (e.g. the write stage's time, which is measured while it is written).

    The file is replaced atomically (temporary file in the same folder, then ``os.replace``), so a reader sees
    either the summary before the update or the complete one.
    """
    data = json.loads(summary_path.read_text(encoding="utf-8"))
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    tmp = summary_path.with_name(f".{summary_path.name}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, summary_path)
    finally:
        tmp.unlink(missing_ok=True)


def segment_file(input_path: str | os.PathLike, output_dir: str | os.PathLike,
                 options: SegmentOptions | None = None, *, progress: Callable[[str, float], None] | None = None,
                 log: Callable[[str], None] | None = None, predictor=None, runner=None,
                 input_description: dict | None = None) -> dict:
    """Segment the CT at ``input_path`` and write its results into ``output_dir``.

    The output folder and the model choice are checked before anything is read or computed; the results are
    written atomically (:func:`~LiverSegLib.outputs.write_case_outputs`).

    Args:
        input_path: CT volume file (NIfTI, NRRD, MetaImage) or DICOM series folder.
        output_dir: the case's result folder (new, empty, or earlier LiverSeg results with ``options.overwrite``).
        options: the run's options (default :class:`SegmentOptions()`).
        progress: ``progress(stage, fraction)`` for "read", the model's stages and "write"; raising in it (e.g.
            :class:`~LiverSegLib.CancelledError`) stops the run before anything is written.
        log: called with each warning of the run.
        predictor: a loaded predictor to reuse (batch runs); ``None`` loads the one ``options`` name.
        runner: run the model through this runner instead (e.g. a
            :class:`~LiverSegLib.runs.subprocess_runner.SubprocessRunner`, one process per case); it reports its
            own warnings.
        input_description: what summary.json records as the input instead of its path (e.g. the DICOMweb server,
            study and series a temporary folder was downloaded from).

    Returns:
        The case summary (as in summary.json) with ``outputs``: the written paths by key.
    """
    from LiverSegLib.io import read_volume
    from LiverSegLib.outputs import check_output_dir, write_case_outputs
    from LiverSegLib.outputs.dicom_export import dicom_source_for
    from LiverSegLib.runs.runners import load_predictor, run_model

    options = options or SegmentOptions()
    report = progress or (lambda stage, fraction: None)
    outdir = Path(output_dir)
    check_output_dir(outdir, options.overwrite)  # before any work: never compute what cannot be written
    if predictor is None and runner is None:
        check_model_choice(options)  # likewise, before reading what may be a large series
    t0 = time.perf_counter()
    report("read", 0.0)
    volume = read_volume(input_path, options.series)
    dicom, dicom_warning = dicom_source_for(volume, options.dicom_seg)  # before the model: a refusal costs nothing
    read_s = time.perf_counter() - t0
    report("read", 1.0)

    if runner is not None:
        result = runner.run(volume, options, progress)
        result.timings_s = {"read": read_s, **result.timings_s}
    else:
        t0 = time.perf_counter()
        predictor = predictor if predictor is not None else load_predictor(options)
        load_s = time.perf_counter() - t0
        result = run_model(predictor, volume, options, report)
        result.timings_s = {"read": read_s, "load_model": load_s, **result.timings_s}
        for warning in result.warnings:
            if log is not None:
                log(f"warning: {warning}")

    if dicom_warning:
        result.warnings.append(dicom_warning)
        if log is not None:
            log(f"warning: {dicom_warning}")
    t0 = time.perf_counter()
    report("write", 0.0)
    where = input_description or {"path": str(Path(input_path).resolve())}
    extra = {"input": {**where, "format": volume.metadata.get("format"), "size_xyz": list(volume.shape_xyz),
                       "spacing_xyz": list(volume.spacing_xyz)}}
    paths = write_case_outputs(result, volume, outdir, surfaces=options.surfaces, overwrite=options.overwrite,
                               extra_summary=extra, overview=options.overview, dicom=dicom)
    try:
        report("write", 1.0)
        summary = result.summary()
        summary["timings_s"]["write"] = round(time.perf_counter() - t0, 4)
        update_summary(Path(paths["summary"]), {"timings_s": {"write": summary["timings_s"]["write"]}})
        summary["outputs"] = {k: [str(p) for p in v] if isinstance(v, list) else str(v) for k, v in paths.items()}
    except KeyboardInterrupt as exc:  # the results are complete and in place: say so instead of "nothing written"
        exc.liverseg_message = f"interrupted after the complete results were written to {outdir}"
        raise
    return summary
