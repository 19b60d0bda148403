"""The DICOM outputs of a case: ``segmentation.dcm`` (SEG) and ``measurements.dcm`` (TID 1500 SR).

They reference the source CT series when the input was DICOM; for another input they reference a DICOM copy of
the CT written beside them (``ct_dicom/``), so that the three can be sent to a PACS together.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from LiverSegLib.types import SegmentationResult, Volume

__all__ = ["DicomSource", "dicom_source_for", "write_dicom_outputs"]


@dataclass
class DicomSource:
    """What the DICOM outputs reference: the source series' headers, or ``None`` to write the CT as DICOM first."""

    datasets: list | None = None

    @property
    def derived(self) -> bool:
        return self.datasets is None


def dicom_source_for(ct: Volume, wanted: bool | None) -> tuple[DicomSource | None, str | None]:
    """Whether and how a case gets DICOM outputs, decided before the model runs (a refusal costs no compute).

    Args:
        ct: the input as read.
        wanted: ``None`` (default): DICOM input -> SEG + SR, other input -> none; ``True``: always (other input:
            the CT is written as DICOM too); ``False``: never.

    Returns:
        The source (or ``None`` for no DICOM outputs) and, when the default could not make them, the warning why.

    Raises:
        InputError: ``wanted`` is True and the DICOM input cannot be referenced (e.g. anonymised UIDs).
    """
    from LiverSegLib.errors import InputError
    from LiverSegLib.outputs.dicom_seg import read_source_series

    if wanted is False:
        return None, None
    if ct.metadata.get("format") != "dicom":
        return (DicomSource(None), None) if wanted else (None, None)
    try:
        return DicomSource(read_source_series(ct)), None
    except InputError as exc:
        if wanted:
            raise
        return None, f"no DICOM SEG/SR written: {exc}".replace("; use --no-dicom-seg", "")


def write_dicom_outputs(result: SegmentationResult, ct: Volume, folder: Path,
                        source: DicomSource) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write the SEG and SR (and, for a derived source, ``ct_dicom/``) into ``folder``.

    Returns:
        The file names relative to ``folder`` by key (``dicom_seg``, ``dicom_sr``, ``ct_dicom``) and the summary's
        ``dicom`` entry (UIDs of what was written and referenced).
    """
    import pydicom

    from LiverSegLib import __version__
    from LiverSegLib.outputs.dicom_ct import write_ct_series
    from LiverSegLib.outputs.dicom_seg import build_segmentation, write_dataset
    from LiverSegLib.outputs.dicom_sr import build_report

    names: dict[str, Any] = {}
    datasets = source.datasets
    if datasets is None:
        files = write_ct_series(ct, folder / "ct_dicom")
        names["ct_dicom"] = [f"ct_dicom/{p.name}" for p in files]
        datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    seg = build_segmentation(result, datasets, __version__)
    names["dicom_seg"] = "segmentation.dcm"
    write_dataset(seg, folder / names["dicom_seg"])
    sr = build_report(result, seg, datasets)
    names["dicom_sr"] = "measurements.dcm"
    write_dataset(sr, folder / names["dicom_sr"])
    info = {"study_instance_uid": str(seg.StudyInstanceUID),
            "source_series_instance_uid": str(datasets[0].SeriesInstanceUID),
            "source_written_here": source.derived,
            "seg": {"series_instance_uid": str(seg.SeriesInstanceUID), "sop_instance_uid": str(seg.SOPInstanceUID),
                    "segments": [str(s.SegmentLabel) for s in seg.SegmentSequence]},
            "sr": {"series_instance_uid": str(sr.SeriesInstanceUID), "sop_instance_uid": str(sr.SOPInstanceUID),
                   "template": "TID 1500"}}
    return names, info
