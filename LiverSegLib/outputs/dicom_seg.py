"""The result as a DICOM Segmentation (SEG) of its source CT series, written with highdicom.

Binary segmentation, two segments coded as the labels of ``models.json`` (SNOMED CT, ``config.TERMINOLOGY``):

1. **Liver**: the whole organ, lesions included (as the liver volume, the surfaces and the report count it);
2. **Liver lesion**: every kept lesion.

Binary rather than fractional: the result is a labelmap (thresholded, connected components, pruning), and binary
SEG is what every consumer reads (3D Slicer's DICOM import, OHIF, PACS viewers); fractional SEG would carry
probabilities the pipeline no longer has on the native grid. Each frame references its CT slice (derivation image
sequence); the frame of reference, study, patient and geometry come from the source series, and empty frames are
left out as dcmqi does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from LiverSegLib.errors import InputError
from LiverSegLib.types import LESION_LABEL, LabelInfo, SegmentationResult, Volume

__all__ = ["read_source_series", "order_source_series", "build_segmentation", "write_dataset", "SEGMENT_LIVER",
           "SEGMENT_LESION", "coded"]

SEGMENT_LIVER = 1
SEGMENT_LESION = 2
MANUFACTURER = "LiverSeg"


def coded(entry: dict):
    """A highdicom coded concept from a ``models.json`` terminology entry ({scheme, code, meaning})."""
    from highdicom.sr import CodedConcept

    return CodedConcept(value=str(entry["code"]), scheme_designator=str(entry["scheme"]), meaning=str(entry["meaning"]))


def order_source_series(datasets: Sequence, ct: Volume) -> list:
    """CT headers of one series in ``ct``'s slice order (its k axis), each checked against ``ct``'s grid.

    For a volume known only by its geometry (e.g. a Slicer volume node and the files of its DICOM instance UIDs):
    each header's position is mapped to a slice of ``ct``. The header UIDs are completed as in
    :func:`read_source_series`.

    Raises:
        InputError: not one slice per k, another series, or a header off ``ct``'s grid.
    """
    datasets = _completed(list(datasets))
    if len({str(ds.SeriesInstanceUID) for ds in datasets}) != 1:
        raise InputError("the DICOM files for the SEG come from more than one series")
    to_index = np.linalg.inv(ct.index_to_physical_matrix())
    by_k: dict[int, object] = {}
    for ds in datasets:
        ijk = to_index[:3, :3] @ np.asarray(ds.ImagePositionPatient, float) + to_index[:3, 3]
        k = int(round(ijk[2]))
        if not np.allclose(ijk, [0, 0, k], atol=0.05) or (int(ds.Rows), int(ds.Columns)) != ct.array_zyx.shape[1:]:
            raise InputError(f"DICOM instance {ds.SOPInstanceUID} does not lie on a slice of the volume: the files "
                             "do not belong to this CT")
        by_k[k] = ds
    if sorted(by_k) != list(range(ct.array_zyx.shape[0])):
        raise InputError(f"the DICOM series has {len(by_k)} distinct slices for the volume's {ct.array_zyx.shape[0]}")
    return [by_k[k] for k in range(ct.array_zyx.shape[0])]


def _completed(datasets: list) -> list:
    """The headers with SOP UIDs taken from the file meta where an anonymiser blanked them, checked for the UIDs a
    SEG must reference (one-line error otherwise)."""
    for ds in datasets:
        # Some anonymisers blank the SOP class/instance UIDs in the data set but keep them in the file meta
        # information, which the standard requires to be equal: the file meta is the copy a PACS indexed.
        meta = getattr(ds, "file_meta", None)
        for key, meta_key in (("SOPClassUID", "MediaStorageSOPClassUID"),
                              ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not str(ds.get(key, "") or "") and meta is not None and str(meta.get(meta_key, "") or ""):
                setattr(ds, key, meta.get(meta_key))
    for key, what in (("StudyInstanceUID", "Study Instance UID"), ("SeriesInstanceUID", "Series Instance UID"),
                      ("SOPInstanceUID", "SOP Instance UIDs"), ("FrameOfReferenceUID", "Frame of Reference UID")):
        if not all(str(ds.get(key, "") or "").strip() for ds in datasets):
            raise InputError(f"the source DICOM series has no {what} (anonymised?): a DICOM SEG cannot reference "
                             "it; use --no-dicom-seg")
    return datasets


def read_source_series(ct: Volume) -> list:
    """The source CT's DICOM headers (pydicom datasets) in the volume's slice order (its k axis).

    Raises:
        InputError: the CT was not read from a DICOM series, or its files changed since it was read.
    """
    import pydicom

    files = ct.metadata.get("dicom_files")
    if ct.metadata.get("format") != "dicom" or not files:
        raise InputError("DICOM SEG and SR need a DICOM input: the result must reference the CT's DICOM series "
                         "(use --no-dicom-seg for this input)")
    if len(files) != ct.shape_xyz[2]:
        raise InputError(f"the DICOM series has {len(files)} files for {ct.shape_xyz[2]} slices; multi-frame CT is "
                         "not supported for DICOM SEG output (use --no-dicom-seg)")
    try:
        datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise InputError(f"cannot re-read the source DICOM files for the SEG: {exc}") from None
    if any(ds.SeriesInstanceUID != ct.metadata.get("series_instance_uid") for ds in datasets):
        raise InputError("the source DICOM files changed while the CT was segmented; run again")
    return _completed(datasets)


def _segment_description(number: int, label: LabelInfo, model_id: str, model_version: str):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    terms = label.terminology
    algorithm = hd.AlgorithmIdentificationSequence(name=f"LiverSeg {model_id}", version=model_version,
                                                   family=codes.cid7162.ArtificialIntelligence)
    regions = [coded(terms["region"])] if "region" in terms else None
    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=label.name, segmented_property_category=coded(terms["category"]),
        segmented_property_type=coded(terms["type"]), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm, tracking_uid=hd.UID(), tracking_id=label.name, anatomic_regions=regions,
        display_color=hd.color.CIELabColor.from_rgb(*(round(255 * c) for c in label.color_rgb)))


def build_segmentation(result: SegmentationResult, source: Sequence, software_version: str,
                       series_number: int | None = None):
    """A highdicom ``Segmentation`` of ``result`` (labelmap on the source grid) referencing ``source``.

    Args:
        result: the segmentation; its labelmap's k axis follows ``source``.
        source: the CT's headers in slice order (:func:`read_source_series`).
        software_version: LiverSeg's version, recorded as the SEG's software version.
        series_number: the SEG series' number (default: the CT's + 1000, as a viewer lists it after the CT).
    """
    import highdicom as hd

    labels = np.asarray(result.labelmap.array_zyx)
    if labels.shape[0] != len(source) or labels.shape[1:] != (int(source[0].Rows), int(source[0].Columns)):
        raise InputError(f"the labelmap ({labels.shape}) does not match the DICOM series ({len(source)} slices of "
                         f"{source[0].Rows}x{source[0].Columns})")
    by_value = {lb.value: lb for lb in result.labels}
    liver_label = by_value.get(1)
    if liver_label is None:
        raise InputError("the result has no liver label to write as a DICOM SEG segment")
    segments = [_segment_description(SEGMENT_LIVER, liver_label, result.model_id, result.model_version)]
    masks = [labels > 0]
    if LESION_LABEL in by_value:
        segments.append(_segment_description(SEGMENT_LESION, by_value[LESION_LABEL], result.model_id,
                                             result.model_version))
        masks.append(labels == LESION_LABEL)
    pixels = np.stack(masks, axis=-1)  # (frames, rows, columns, segments): the segments may overlap
    number = int(series_number if series_number is not None else int(getattr(source[0], "SeriesNumber", 0) or 0)
                 + 1000)
    return hd.seg.Segmentation(
        source_images=list(source), pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=number,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER,
        manufacturer_model_name=f"{result.model_id} {result.model_version}", software_versions=software_version,
        device_serial_number=result.model_id, content_label="LIVERSEG",
        content_description="Liver and liver lesions (LiverSeg)", series_description="LiverSeg liver segmentation")


def write_dataset(dataset, path: Path) -> Path:
    """Save a DICOM dataset (SEG or SR) with its file meta information."""
    dataset.save_as(str(path), enforce_file_format=True)
    return path
