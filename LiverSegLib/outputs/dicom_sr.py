"""The measurements as a DICOM TID 1500 Measurement Report (Comprehensive 3D SR), written with highdicom.

One measurement group (TID 1411, volumetric ROI) per structure, each referencing its segment of the DICOM SEG:

- **Liver** (SEG segment 1): liver volume (mL, the whole organ with its lesions) and the number of lesions;
- **Lesion N** (SEG segment 2, the SEG frames that hold lesion N): its volume (mL), its maximum 3D diameter (mm, the
  largest distance between two voxel centres of its surface) and its centre of mass (a SCOORD3D point in the
  frame of reference of the CT, LPS mm).

SNOMED CT / DICOM codes where they exist (Volume 118565006, Diameter 81827009 with derivation Maximum 56851009,
DCM 128138 Center of Mass); the lesion count has no standard concept and uses a private code ``99LIVERSEG``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from LiverSegLib.outputs.dicom_seg import MANUFACTURER, SEGMENT_LESION, SEGMENT_LIVER, coded
from LiverSegLib.pipeline.postprocess import CONNECTIVITY
from LiverSegLib.types import LESION_LABEL, SegmentationResult

__all__ = ["build_report", "LESION_COUNT"]

#: Private concept of the lesion count (a "99" coding scheme is the standard's way to add local codes).
LESION_COUNT = ("LS0001", "99LIVERSEG", "Number of liver lesions")


def _concept(value: str, scheme: str, meaning: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def _lesion_slices(result: SegmentationResult) -> dict[int, set[int]]:
    """The labelmap slices (k) holding each lesion of ``result.lesions``.

    The labelmap keeps lesion voxels, not lesion ids: its lesion components are found again (the pipeline's
    connectivity) and matched to the table by voxel count, then by the nearest centre of mass.
    """
    import cc3d

    labels = np.asarray(result.labelmap.array_zyx)
    components, n = cc3d.connected_components((labels == LESION_LABEL).astype(np.uint8), connectivity=CONNECTIVITY,
                                              return_N=True)
    if n == 0:
        return {}
    stats = cc3d.statistics(components)
    m = result.labelmap.index_to_physical_matrix()
    centres_ijk = np.asarray(stats["centroids"][1:], float)[:, ::-1]  # (z, y, x) -> (i, j, k)
    centres_lps = centres_ijk @ m[:3, :3].T + m[:3, 3]
    counts = np.asarray(stats["voxel_counts"][1:])
    out: dict[int, set[int]] = {}
    for lesion in result.lesions:
        same_size = np.flatnonzero(counts == lesion.voxels)
        candidates = same_size if len(same_size) else np.arange(n)
        best = candidates[np.argmin(np.linalg.norm(centres_lps[candidates] - np.asarray(lesion.centroid_lps),
                                                   axis=1))]
        zs = stats["bounding_boxes"][best + 1][0]
        out[lesion.lesion_id] = {k for k in range(zs.start, zs.stop) if np.any(components[k] == best + 1)}
    return out


def _frames_by_lesion(seg, result: SegmentationResult, source: Sequence) -> dict[int, list[int]]:
    """SEG frame numbers (1-based) of the lesion segment that hold each lesion, by lesion id."""
    slice_of = {str(ds.SOPInstanceUID): k for k, ds in enumerate(source)}
    frame_of_slice: dict[int, int] = {}
    for number, item in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        if int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber) != SEGMENT_LESION:
            continue
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        frame_of_slice[slice_of[uid]] = number
    return {lesion_id: sorted(frame_of_slice[k] for k in ks if k in frame_of_slice)
            for lesion_id, ks in _lesion_slices(result).items()}


def build_report(result: SegmentationResult, seg, source: Sequence, series_number: int | None = None):
    """A highdicom ``Comprehensive3DSR`` holding the TID 1500 report of ``result``, referencing ``seg``.

    Args:
        result: the segmentation (its lesion table and liver volume).
        seg: the DICOM SEG written for it (:func:`~LiverSegLib.outputs.dicom_seg.build_segmentation`).
        source: the CT's headers in slice order.
        series_number: the SR series' number (default: the SEG's + 1).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    ml = _concept("mL", "UCUM", "milliliter")
    frame_of_reference = str(source[0].FrameOfReferenceUID)
    source_series = hd.sr.SourceSeriesForSegmentation(str(source[0].SeriesInstanceUID))
    algorithm = hd.sr.AlgorithmIdentification(name=f"LiverSeg {result.model_id}", version=result.model_version)
    liver_terms = next(lb.terminology for lb in result.labels if lb.value == 1)
    lesion_label = next((lb for lb in result.labels if lb.value == LESION_LABEL), None)

    def referenced(segment: int, frames: list[int] | None = None):
        return hd.sr.ReferencedSegment(sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
                                       segment_number=segment, frame_numbers=frames or None,
                                       source_series=source_series)

    groups = [hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Liver"),
        referenced_segment=referenced(SEGMENT_LIVER), finding_type=coded(liver_terms["type"]),
        finding_category=coded(liver_terms["category"]), algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(name=codes.SCT.Volume, value=round(result.liver_volume_ml, 3), unit=ml,
                              algorithm_id=algorithm),
            hd.sr.Measurement(name=_concept(*LESION_COUNT), value=len(result.lesions),
                              unit=_concept("{lesions}", "UCUM", "lesions"), algorithm_id=algorithm),
        ])]
    frames = _frames_by_lesion(seg, result, source) if result.lesions else {}
    for lesion in result.lesions:
        assert lesion_label is not None
        group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"Lesion {lesion.lesion_id}"),
            referenced_segment=referenced(SEGMENT_LESION, frames.get(lesion.lesion_id)),
            finding_type=coded(lesion_label.terminology["type"]),
            finding_category=coded(lesion_label.terminology["category"]),
            finding_sites=[hd.sr.FindingSite(coded(lesion_label.terminology["region"]))]
            if "region" in lesion_label.terminology else None,
            algorithm_id=algorithm,
            measurements=[
                hd.sr.Measurement(name=codes.SCT.Volume, value=round(lesion.volume_ml, 4), unit=ml,
                                  algorithm_id=algorithm),
                hd.sr.Measurement(name=codes.SCT.Diameter, value=round(lesion.max_diameter_mm, 2),
                                  unit=codes.UCUM.Millimeter, derivation=codes.SCT.Maximum, algorithm_id=algorithm),
            ])
        # the centre of mass: a 3D point in the CT's frame of reference, inside the lesion's group
        group[0].ContentSequence.append(hd.sr.Scoord3DContentItem(
            name=codes.DCM.CenterOfMass, graphic_type=hd.sr.GraphicTypeValues3D.POINT,
            graphic_data=np.asarray([lesion.centroid_lps], float), frame_of_reference_uid=frame_of_reference,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
        groups.append(group)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="LiverSeg", manufacturer_name=MANUFACTURER,
            model_name=f"{result.model_id} {result.model_version}"))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=groups)
    number = int(series_number if series_number is not None else int(seg.SeriesNumber) + 1)
    return hd.sr.Comprehensive3DSR(
        evidence=[seg, *source], content=report[0], series_instance_uid=hd.UID(), series_number=number,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
        series_description="LiverSeg liver and lesion measurements")
