"""Segment a series straight from a PACS over DICOMweb, and optionally store the SEG and SR back to it.

``liverseg segment --dicomweb URL --study UID [--series UID] -o OUT [--send]``: the series is retrieved (WADO-RS) into
a temporary folder, segmented as any DICOM folder (:func:`~LiverSegLib.runs.segment.segment_file`, DICOM outputs on),
and with ``send`` the two result instances are stored (STOW-RS) into the same study. The result folder records where
the CT came from and what was stored.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from LiverSegLib.errors import InputError
from LiverSegLib.runs.options import SegmentOptions
from LiverSegLib.runs.segment import segment_file, update_summary

__all__ = ["segment_from_dicomweb"]


def segment_from_dicomweb(url: str, study_uid: str, output_dir: str | Path, options: SegmentOptions | None = None, *,
                          series_uid: str | None = None, send: bool = False,
                          progress: Callable[[str, float], None] | None = None,
                          log: Callable[[str], None] | None = None) -> dict:
    """Pull, segment, (push). Returns the case summary, with ``dicomweb``: the server, study, series and what was
    stored (``sent``: SOP Instance UIDs).

    Raises:
        InputError: unknown study/series, several CT series and none chosen, ``send`` without DICOM outputs, a
            refusal by the server; :class:`~LiverSegLib.io.dicomweb.RemoteError`: the server is unreachable or fails.
    """
    from LiverSegLib.io import dicomweb
    from LiverSegLib.outputs import check_output_dir

    options = options or SegmentOptions()
    if options.dicom_seg is False and send:
        raise InputError("--send stores the DICOM SEG and SR: it cannot be combined with --no-dicom-seg")
    options = replace(options, dicom_seg=True if options.dicom_seg is None else options.dicom_seg, series=None)
    check_output_dir(Path(output_dir), options.overwrite)  # before the download
    client = dicomweb.connect(url)
    series_uid = dicomweb.choose_series(client, url, study_uid, series_uid)
    report = progress or (lambda stage, fraction: None)
    with tempfile.TemporaryDirectory(prefix="liverseg-dicomweb-") as tmp:
        report("download", 0.0)
        dicomweb.retrieve_series(client, url, study_uid, series_uid, Path(tmp) / "series")
        report("download", 1.0)
        source = {"dicomweb": url, "study_instance_uid": study_uid, "series_instance_uid": series_uid}
        summary = segment_file(Path(tmp) / "series", output_dir, options, progress=progress, log=log,
                               input_description=source)
    record = dict(source)
    if send:
        report("send", 0.0)
        outputs = summary["outputs"]
        record["sent"] = dicomweb.store(client, url, [Path(outputs["dicom_seg"]), Path(outputs["dicom_sr"])])
        report("send", 1.0)
    update_summary(Path(summary["outputs"]["summary"]), {"dicomweb": record})
    summary["dicomweb"] = record
    return summary
