"""A real PACS for the tests: Debian's Orthanc with its DICOMweb plugin, started on 127.0.0.1 with its storage
in a temporary folder, basic authentication on (one user), no DICOM network port, nothing reachable from
elsewhere. :func:`orthanc` yields its DICOMweb root and the user's credentials, and stops it after."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from base64 import b64encode
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "pacs-test", "pacs-test-password-1234"


def available() -> bool:
    return os.path.exists(ORTHANC) and PLUGIN.exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def orthanc(folder: Path) -> Iterator[dict]:
    """Orthanc on a free port of 127.0.0.1, storing in ``folder``: ``{"url": DICOMweb root, "rest": REST root,
    "user", "password", "log"}``."""
    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config = {
        "Name": "cxr-test-pacs", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "index"),
        "HttpPort": port,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
        "DicomServerEnabled": False, "HttpCompressionEnabled": False,
        "Plugins": [str(PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
        "StableAge": 1, "ConcurrentJobs": 1, "HttpThreadsCount": 8,
    }
    (folder / "orthanc.json").write_text(json.dumps(config, indent=1))
    log = open(folder / "orthanc.log", "wb")
    proc = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    rest = f"http://127.0.0.1:{port}"
    auth = "Basic " + b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                req = urllib.request.Request(f"{rest}/system", headers={"Authorization": auth})
                if urllib.request.urlopen(req, timeout=2).status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise RuntimeError("Orthanc did not start: " + (folder / "orthanc.log").read_text(errors="replace")[-2000:])
            time.sleep(0.2)
        yield {"url": f"{rest}/dicom-web", "rest": rest, "user": USER, "password": PASSWORD,
               "log": folder / "orthanc.log"}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
