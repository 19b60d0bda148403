"""A throw-away Orthanc PACS with its DICOMweb plugin on a loopback port, for the DICOMweb integration test.

``.ci/run`` starts one (``python Testing/orthanc_server.py start DIR`` prints its URL) and exports
``LIVERSEG_TEST_ORTHANC``; without it the test fixture starts its own. Orthanc and the plugin come from Debian
(``apt-get install orthanc orthanc-dicomweb``); where they are missing the tests skip and say so.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PLUGIN_PLACES = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so",
                 "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so")


def missing() -> str | None:
    """Why no Orthanc can start here, or ``None``."""
    if shutil.which("Orthanc") is None:
        return "Orthanc is not installed (Debian: apt-get install orthanc orthanc-dicomweb)"
    if _plugin() is None:
        return "Orthanc's DICOMweb plugin is not installed (Debian: apt-get install orthanc-dicomweb)"
    return None


def _plugin() -> str | None:
    return next((p for p in PLUGIN_PLACES if Path(p).is_file()), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(folder: Path, timeout_s: float = 30.0) -> tuple[subprocess.Popen, str]:
    """Start Orthanc with its storage in ``folder``; the process and the server's URL once it answers."""
    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config = {"Name": "LiverSegTest", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
              "HttpPort": port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
              "AuthenticationEnabled": False, "Plugins": [_plugin()],
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 - the server's output for as long as it runs
    process = subprocess.Popen(["Orthanc", str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited ({process.returncode}); see {folder / 'orthanc.log'}")
        try:
            with urllib.request.urlopen(f"{url}/system", timeout=2):
                return process, url
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"Orthanc did not answer within {timeout_s} s; see {folder / 'orthanc.log'}")


def main(argv: list[str]) -> int:
    """``start DIR``: run Orthanc in the background, print ``URL PID``."""
    if len(argv) != 2 or argv[0] != "start":
        print("usage: orthanc_server.py start DIR", file=sys.stderr)
        return 2
    why = missing()
    if why:
        print(why, file=sys.stderr)
        return 1
    process, url = start(Path(argv[1]))
    print(url, process.pid)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
