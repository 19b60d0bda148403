"""A liver segmentation node saved as DICOM SEG + TID 1500 SR (the library's writers, so the same UIDs and codes as
``liverseg segment``), and added to Slicer's DICOM database when there is one.

The segments are read as they are now (manual edits included): the Liver segment (the whole organ) and the
Liver lesion segment, on the CT volume's grid. The SEG references the CT's own DICOM series: the files of the
volume's ``DICOM.instanceUIDs`` in the DICOM database, or the files given. A volume that did not come from DICOM
is written as a DICOM CT series first (``ct_dicom/``) and referenced there. Everything is written into a hidden
folder beside the output folder and renamed into place: a failure leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import slicer

from LiverSegLib.config import default_labels
from LiverSegLib.errors import InputError
from LiverSegLib.types import LESION_LABEL, LIVER_LABEL, SegmentationResult

from .segmentation_writer import ATTRIBUTE_PREFIX
from .statistics import segmentContents
from .volumes import volumeFromNode

__all__ = ["exportDicom", "sourceFilesOf"]


def sourceFilesOf(volumeNode) -> list[str]:
    """The DICOM files a volume was loaded from, through the DICOM database (empty without one or without UIDs)."""
    uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
    database = getattr(slicer, "dicomDatabase", None)
    if not uids or database is None:
        return []
    files = [database.fileForInstance(uid) for uid in uids]
    return [f for f in files if f]


def _checkHighdicom() -> None:
    """highdicom (pydicom 3) is not a first-run requirement: Slicer 5.10 bundles pydicom 2.4.4 for its own DICOM
    module, and installing highdicom would replace it. Say so instead of failing inside the export."""
    try:
        import highdicom  # noqa: F401
    except ImportError:
        import pydicom

        raise InputError(f"saving DICOM SEG/SR needs highdicom, which needs pydicom 3 (this Slicer has pydicom "
                         f"{pydicom.__version__}); use 'liverseg segment DICOM_FOLDER' (it writes segmentation.dcm "
                         "and measurements.dcm), or install highdicom in a Slicer with pydicom 3") from None


def _result(segmentationNode, inputVolume) -> SegmentationResult:
    ct = volumeFromNode(inputVolume, copy=False)
    liver, lesion, lesions, _ = segmentContents(segmentationNode, inputVolume)
    labels = np.where(lesion > 0, LESION_LABEL, np.where(liver > 0, LIVER_LABEL, 0)).astype(np.uint8)
    if not labels.any():
        raise InputError(f"'{segmentationNode.GetName()}' has an empty liver segment: nothing to save")
    model, _, version = (segmentationNode.GetAttribute(ATTRIBUTE_PREFIX + "Model") or "unknown ").partition(" ")
    return SegmentationResult(
        labelmap=ct.with_array(labels), labels=default_labels(), lesions=lesions,
        liver_volume_ml=float(np.count_nonzero(labels)) * ct.voxel_volume_ml,
        lesion_volume_ml=float(np.count_nonzero(labels == LESION_LABEL)) * ct.voxel_volume_ml,
        model_id=model or "unknown", model_version=version or "unknown")


def exportDicom(segmentationNode, inputVolume, outputFolder, sourceFiles=None, addToDatabase: bool = True) -> dict:
    """Write ``segmentation.dcm`` and ``measurements.dcm`` for ``segmentationNode`` into ``outputFolder``.

    Args:
        segmentationNode: a liver segmentation (from ``LiverSegLogic.process`` or edited since).
        inputVolume: the CT volume it was made on.
        outputFolder: a new (or empty) folder.
        sourceFiles: the CT's DICOM files (default: found through the DICOM database from the volume's
            ``DICOM.instanceUIDs``; none: the CT is written as DICOM into ``ct_dicom/``).
        addToDatabase: import the written files into ``slicer.dicomDatabase`` when Slicer has one open.

    Returns:
        ``{"files": [paths], "dicom": {...UIDs...}, "database": bool}``.

    Raises:
        InputError: a missing segment, files that are not this CT's series, a non-empty output folder.
    """
    import pydicom

    _checkHighdicom()
    from LiverSegLib.outputs.dicom_export import DicomSource, write_dicom_outputs
    from LiverSegLib.outputs.dicom_seg import order_source_series

    out = Path(outputFolder)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} is not a new or empty folder: choose another one (nothing was written)")
    result = _result(segmentationNode, inputVolume)
    files = list(sourceFiles) if sourceFiles is not None else sourceFilesOf(inputVolume)
    source = DicomSource(None)
    if files:
        datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        source = DicomSource(order_source_series(datasets, result.labelmap))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.liverseg-tmp-", dir=out.parent))  # same file system as out
    try:
        names, info = write_dicom_outputs(result, volumeFromNode(inputVolume, copy=False), tmp, source)
        mask = os.umask(0)
        os.umask(mask)
        tmp.chmod(0o777 & ~mask)  # mkdtemp's 0700 would make the user's folder private
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    written = [str(out / names["dicom_seg"]), str(out / names["dicom_sr"])] + [str(out / n) for n in
                                                                               names.get("ct_dicom", [])]
    database = getattr(slicer, "dicomDatabase", None)
    imported = False
    if addToDatabase and database is not None and getattr(database, "isOpen", False):
        from DICOMLib import DICOMUtils  # Slicer's application (Qt); absent in slicer-core

        DICOMUtils.importDicom(str(out), database)
        imported = True
    return {"files": written, "dicom": info, "database": imported}
