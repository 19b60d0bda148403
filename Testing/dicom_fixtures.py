"""Real DICOM series for the DICOM SEG/SR tests (CLI and Slicer).

The TotalSegmentator example series (20 real Siemens CT slices) was anonymised with the Study Instance UID and the
SOP UIDs blanked in its data sets (the file meta keeps the SOP UIDs): as shipped no SEG can reference it.
:func:`ts_series_with_study` gives it a study UID and a patient ID, as a PACS import would, and leaves the SOP UIDs
blank, so the writer's recovery of them from the file meta is exercised too.
"""

from __future__ import annotations

from pathlib import Path

import pydicom

from LiverSegLib.data.samples import fetch_source

TS_DICOM = "tests/reference_files/example_ct_dicom"
STUDY_UID = "1.2.826.0.1.3680043.10.511.3.12345678901234567890"
PATIENT_ID = "LIVERSEG-TEST"


def ts_series_with_study(folder: Path) -> Path:
    """The example series copied into ``folder`` with :data:`STUDY_UID` and :data:`PATIENT_ID`."""
    folder.mkdir(parents=True)
    for path in sorted((fetch_source("totalsegmentator") / TS_DICOM).iterdir()):
        ds = pydicom.dcmread(path)
        assert ds.SOPInstanceUID == "" and ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.PatientID = STUDY_UID, PATIENT_ID
        ds.save_as(folder / path.name)
    return folder


def sop_uid(path: str | Path) -> str:
    """A file's SOP Instance UID (from the file meta where the data set's is blank)."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.SOPInstanceUID or ds.file_meta.MediaStorageSOPInstanceUID)
