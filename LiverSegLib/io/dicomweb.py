"""A PACS over DICOMweb: find and retrieve a CT series (QIDO-RS, WADO-RS) and store results (STOW-RS).

``dicomweb-client`` speaks the protocol; a ``requests`` session under it retries connection failures and the
server errors a busy PACS gives (502/503/504) 4 times with back-off (about 7 s in all), so a restarting server is
waited for rather than failing the run (the client's own retry is off: the two would multiply). What still fails
becomes one line: the server is down (:class:`RemoteError`), or it refused the request
(:class:`~LiverSegLib.errors.InputError`: unknown study or series, a rejected instance).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from LiverSegLib.errors import InputError, RemoteError

__all__ = ["RemoteError", "connect", "choose_series", "retrieve_series", "store"]

RETRIES = 4
BACKOFF_S = 0.5


def connect(url: str, timeout_s: float = 60.0):
    """A DICOMweb client for ``url`` (e.g. ``http://pacs:8042/dicom-web``) whose requests retry."""
    import requests
    from dicomweb_client.api import DICOMwebClient
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    if not url.startswith(("http://", "https://")):
        raise InputError(f"--dicomweb needs an http(s) URL of the server's DICOMweb root, got {url!r}")
    session = requests.Session()
    retry = Retry(total=RETRIES, connect=RETRIES, read=RETRIES, status=RETRIES, backoff_factor=BACKOFF_S,
                  status_forcelist=(502, 503, 504), allowed_methods=None, raise_on_status=False)
    session.mount("http://", HTTPAdapter(max_retries=retry))
    session.mount("https://", HTTPAdapter(max_retries=retry))
    client = DICOMwebClient(url=url.rstrip("/"), session=session, timeout=timeout_s)
    client.set_http_retry_params(retry=False)  # one retry policy (the session's), not two multiplied together
    return client


def _call(what: str, url: str, function, *args, **kwargs):
    """Run a client call; its failures as one line (server down: RemoteError; refused: InputError)."""
    import requests

    try:
        return function(*args, **kwargs)
    except requests.exceptions.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        if isinstance(status, int) and 400 <= status < 500:
            raise InputError(f"the DICOMweb server at {url} refused to {what} (HTTP {status})") from None
        raise RemoteError(f"the DICOMweb server at {url} failed to {what} (HTTP {status}) after {RETRIES} "
                          "retries") from None
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
            requests.exceptions.RetryError) as exc:
        reason = type(exc).__name__
        raise RemoteError(f"cannot reach the DICOMweb server at {url} to {what} ({reason} after {RETRIES} "
                          "retries): is it running, and is the URL its DICOMweb root?") from None


def _value(entry: dict, tag: str) -> str:
    values = entry.get(tag, {}).get("Value", [])
    return str(values[0]) if values else ""


def choose_series(client, url: str, study_uid: str, series_uid: str | None) -> str:
    """The series to segment: the one given (checked to exist) or the study's only CT series."""
    found = _call(f"search study {study_uid}", url, client.search_for_series, study_instance_uid=study_uid)
    if not found:
        raise InputError(f"study {study_uid} has no series on {url} (check the Study Instance UID)")
    series = [(_value(e, "0020000E"), _value(e, "00080060"), _value(e, "0008103E")) for e in found]
    if series_uid is not None:
        if series_uid not in [s[0] for s in series]:
            raise InputError(f"series {series_uid} is not in study {study_uid} on {url}; it holds: "
                             + "; ".join(f"{u} ({m} {d!r})" for u, m, d in series))
        return series_uid
    ct = [s for s in series if s[1] == "CT"]
    if len(ct) != 1:
        listing = "; ".join(f"{u} ({m} {d!r})" for u, m, d in series)
        raise InputError(f"study {study_uid} holds {len(ct)} CT series on {url}: {listing}; choose one with "
                         "--series UID")
    return ct[0][0]


def retrieve_series(client, url: str, study_uid: str, series_uid: str, folder: Path) -> list[Path]:
    """Every instance of the series, written as ``folder/<n>.dcm``."""
    # as stored (transfer syntax "*"): a PACS that cannot transcode (e.g. JPEG 2000) still sends; GDCM decodes it
    datasets = _call(f"retrieve series {series_uid}", url, client.retrieve_series, study_uid, series_uid,
                     media_types=(("application/dicom", "*"),))
    if not datasets:
        raise InputError(f"series {series_uid} of study {study_uid} has no instances on {url}")
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for n, ds in enumerate(datasets):
        path = folder / f"{n:06d}.dcm"
        ds.save_as(str(path), enforce_file_format=True)
        files.append(path)
    return files


def store(client, url: str, paths: Sequence[Path]) -> list[str]:
    """STOW-RS of DICOM files; the SOP Instance UIDs the server accepted (every one, or an error)."""
    import pydicom

    datasets = [pydicom.dcmread(str(p)) for p in paths]
    response = _call("store the results", url, client.store_instances, datasets)
    failed = response.get("FailedSOPSequence", []) if response is not None else []
    if failed:
        reasons = ", ".join(f"{item.get('ReferencedSOPInstanceUID', '?')} (reason {item.get('FailureReason', '?')})"
                            for item in failed)
        raise InputError(f"the DICOMweb server at {url} refused to store {len(failed)} instance(s): {reasons}")
    return [str(ds.SOPInstanceUID) for ds in datasets]
