"""Real DICOM series for the DICOM SEG/SR tests (CLI and Slicer).

The TotalSegmentator example series (20 real Siemens CT slices) was anonymised with the Study and Series Instance
UIDs and the SOP UIDs blanked in its data sets (the file meta keeps the SOP UIDs): as shipped no SEG can reference
it, and a PACS refuses it. :func:`ts_series_with_study` gives it study and series UIDs and a patient ID, as a PACS
import would; ``keep_blank_sop=True`` leaves the SOP UIDs blank, so the writer's recovery of them from the file meta
is exercised (a PACS needs them: ``False`` fills them from the file meta).
"""

from __future__ import annotations

from pathlib import Path

import pydicom

from LiverSegLib.data.samples import fetch_source

TS_DICOM = "tests/reference_files/example_ct_dicom"
STUDY_UID = "1.2.826.0.1.3680043.10.511.3.12345678901234567890"
SERIES_UID = "1.2.826.0.1.3680043.10.511.3.12345678901234567891"
PATIENT_ID = "LIVERSEG-TEST"


def ts_series_with_study(folder: Path, keep_blank_sop: bool = True) -> Path:
    """The example series copied into ``folder`` with :data:`STUDY_UID`, :data:`SERIES_UID`, :data:`PATIENT_ID`."""
    folder.mkdir(parents=True)
    for path in sorted((fetch_source("totalsegmentator") / TS_DICOM).iterdir()):
        ds = pydicom.dcmread(path)
        assert ds.SOPInstanceUID == "" and ds.SeriesInstanceUID == "" and ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID = STUDY_UID, SERIES_UID, PATIENT_ID
        if not keep_blank_sop:
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.save_as(folder / path.name)
    return folder


def sop_uid(path: str | Path) -> str:
    """A file's SOP Instance UID (from the file meta where the data set's is blank)."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.SOPInstanceUID or ds.file_meta.MediaStorageSOPInstanceUID)
