"""A round trip through a real PACS (issue 12): the real DICOM example uploaded to Orthanc, pulled by ``liverseg
segment --dicomweb`` (WADO-RS), segmented, the SEG and SR stored back (STOW-RS), then found in Orthanc by a QIDO-RS
query and checked. Orthanc runs on a loopback port: the one ``.ci/run`` started (``LIVERSEG_TEST_ORTHANC``) or one
started here; where Orthanc is not installed the tests skip with the reason.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.request

import orthanc_server
import pydicom
import pytest
from cli_fixtures import assert_one_line_error, cli_env, run_cli
from dicom_fixtures import SERIES_UID, STUDY_UID, ts_series_with_study


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    url = os.environ.get("LIVERSEG_TEST_ORTHANC")
    if url:
        yield url
        return
    why = orthanc_server.missing()
    if why:
        pytest.skip(why)
    process, url = orthanc_server.start(tmp_path_factory.mktemp("orthanc"))
    yield url
    process.terminate()
    process.wait(timeout=20)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    return cli_env(tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def uploaded(orthanc, tmp_path_factory) -> str:
    """The real example series in Orthanc (uploaded through Orthanc's own REST API, not LiverSeg's code)."""
    folder = ts_series_with_study(tmp_path_factory.mktemp("upload") / "series", keep_blank_sop=False)
    for path in sorted(folder.iterdir()):
        request = urllib.request.Request(f"{orthanc}/instances", data=path.read_bytes(), method="POST",
                                         headers={"Content-Type": "application/dicom"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
    return orthanc


def _json(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _instance(orthanc: str, sop_uid: str) -> pydicom.Dataset:
    """An instance as Orthanc stores it (found by its SOP Instance UID through Orthanc's REST API)."""
    request = urllib.request.Request(f"{orthanc}/tools/find", method="POST", data=json.dumps(
        {"Level": "Instance", "Query": {"SOPInstanceUID": sop_uid}}).encode())
    with urllib.request.urlopen(request, timeout=30) as response:
        ids = json.loads(response.read())
    assert len(ids) == 1, f"{sop_uid} is not in Orthanc"
    with urllib.request.urlopen(f"{orthanc}/instances/{ids[0]}/file", timeout=30) as response:
        from io import BytesIO

        return pydicom.dcmread(BytesIO(response.read()))


def test_pull_segment_and_send_back_through_dicomweb(uploaded, tmp_path, env):
    orthanc = uploaded
    out = tmp_path / "out"
    proc = run_cli("--dicomweb", f"{orthanc}/dicom-web", "--study", STUDY_UID, "-o", out, "--send", "--progress",
                   "none", "--no-overview", "--quick", env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["input"]["dicomweb"] == f"{orthanc}/dicom-web"
    assert summary["input"]["series_instance_uid"] == SERIES_UID
    sent = summary["dicomweb"]["sent"]
    assert sent == [summary["dicom"]["seg"]["sop_instance_uid"], summary["dicom"]["sr"]["sop_instance_uid"]]
    # QIDO-RS: the study now holds the CT, a SEG and an SR
    series = _json(f"{orthanc}/dicom-web/studies/{STUDY_UID}/series")
    modalities = sorted(s["00080060"]["Value"][0] for s in series)
    assert modalities == ["CT", "SEG", "SR"]
    seg, sr = _instance(orthanc, sent[0]), _instance(orthanc, sent[1])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == SERIES_UID
    assert [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence] == ["10200004",
                                                                                              "108369006"]
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == STUDY_UID
    assert sr.ConceptNameCodeSequence[0].CodeValue == "126000"
    evidence = {s.SeriesInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence}
    assert evidence == {SERIES_UID, seg.SeriesInstanceUID}
    # the SEG in Orthanc is the one written beside the results, byte for byte in what matters
    local = pydicom.dcmread(out / "segmentation.dcm")
    assert local.SOPInstanceUID == seg.SOPInstanceUID and local.PixelData == seg.PixelData


def test_unknown_study_is_refused_in_one_line(uploaded, tmp_path, env):
    proc = run_cli("--dicomweb", f"{uploaded}/dicom-web", "--study", "1.2.3.4.5", "-o", tmp_path / "out",
                   "--progress", "none", env=env)
    assert_one_line_error(proc, "study 1.2.3.4.5 has no series")
    assert not (tmp_path / "out").exists()


def test_a_server_that_is_down_is_one_line_and_nothing_is_written(tmp_path, env):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run_cli("--dicomweb", f"http://127.0.0.1:{port}/dicom-web", "--study", STUDY_UID, "-o", tmp_path / "out",
                   "--progress", "none", env=env, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "cannot reach the DICOMweb server" in lines[0] and "after 4 retries" in lines[0]
    assert not (tmp_path / "out").exists()


def test_dicomweb_options_are_checked_before_anything_runs(tmp_path, env):
    for args, words in (((tmp_path, "--dicomweb", "http://x/dicom-web", "--study", "1.2"), ("INPUT or --dicomweb",)),
                        (("--dicomweb", "http://x/dicom-web"), ("needs --study",)),
                        ((tmp_path, "--send"), ("--send only applies with --dicomweb",)),
                        (("--dicomweb", "http://x/dicom-web", "--study", "1.2", "--send", "--no-dicom-seg"),
                         ("cannot be combined with --no-dicom-seg",)),
                        (("--dicomweb", "ftp://x", "--study", "1.2"), ("http(s) URL",))):
        proc = run_cli(*args, "-o", tmp_path / "out", env=env)
        assert_one_line_error(proc, *words)
    assert not (tmp_path / "out").exists()
