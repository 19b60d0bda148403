"""A CT volume written as a DICOM CT series (one file per slice), so that a SEG and an SR can reference it.

Used when a DICOM SEG is asked for an input that is not DICOM (``--dicom-seg`` on a NIfTI/NRRD file): the CT is
written as a derived series (Image Type DERIVED/SECONDARY, HU as signed 16-bit with slope 1) with new UIDs, in the
volume's own geometry (any orthonormal direction: each slice carries its position and the orientation of its
rows and columns).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from LiverSegLib.types import Volume

__all__ = ["write_ct_series"]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def write_ct_series(ct: Volume, folder: Path, *, patient_id: str = "ANONYMOUS", patient_name: str = "",
                    study_uid: str | None = None, series_description: str = "CT (from LiverSeg input)",
                    series_number: int = 1) -> list[Path]:
    """Write ``ct`` into ``folder`` as ``CT000001.dcm``...; returns the files in slice (k) order."""
    import highdicom as hd
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now()
    study_uid = study_uid or hd.UID()
    series_uid, frame_uid = hd.UID(), hd.UID()
    cols = ct.direction[:, 0]  # i: along a row (DICOM's first orientation vector)
    rows = ct.direction[:, 1]  # j: down a column
    m = ct.index_to_physical_matrix()
    pixels = np.clip(np.rint(np.asarray(ct.array_zyx, np.float64)), -32768, 32767).astype(np.int16)
    files = []
    for k in range(ct.shape_xyz[2]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = hd.UID()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.Modality = "CT"
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = patient_id, patient_name, "", ""
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "", "", ""
        ds.Manufacturer = "LiverSeg"
        ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = series_description, series_number, k + 1
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [float(v) for v in (m @ np.array([0.0, 0.0, k, 1.0]))[:3]]
        ds.ImageOrientationPatient = [float(v) for v in (*cols, *rows)]
        ds.PixelSpacing = [float(ct.spacing_xyz[1]), float(ct.spacing_xyz[0])]  # row spacing (j), column spacing (i)
        ds.SliceThickness = float(ct.spacing_xyz[2])
        ds.Rows, ds.Columns = int(ct.shape_xyz[1]), int(ct.shape_xyz[0])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.KVP = ""
        ds.PixelData = np.ascontiguousarray(pixels[k]).tobytes()
        path = folder / f"CT{k + 1:06d}.dcm"
        ds.save_as(str(path), enforce_file_format=True)
        files.append(path)
    return files
