"""A real Orthanc (the Debian ``/usr/sbin/Orthanc``) as a throwaway PACS for tests.

Orthanc gets a temporary JSON configuration, free loopback ports and its own
storage directory. Orthanc 1.10 has no bind-address option, so it is closed
off instead: the REST API refuses remote clients (``RemoteAccessAllowed``
false) and C-STORE is accepted only from the listed calling AE titles
connecting from 127.0.0.1 (``DicomModalities`` with ``DicomCheckModalityHost``).
The server can be stopped or killed and started again on the same ports and
storage, to play "PACS down, then back". With :class:`DicomWeb` it loads the Debian
``orthanc-dicomweb`` plugin (STOW-RS at ``/dicom-web/studies``), optionally behind HTTP basic
authentication and Lua request filters. (Orthanc 1.10's own HTTPS crashes with OpenSSL 3 on
the first handshake; tests put a TLS-terminating ``tests.support.servers.TcpProxy`` in front.)
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

ORTHANC_BINARY = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class OrthancError(RuntimeError):
    """Orthanc could not be started or answered unexpectedly."""


@dataclass(frozen=True)
class DicomWeb:
    """Orthanc's DICOMweb plugin, served at ``/dicom-web/``.

    ``users`` (user name to password) turns on HTTP basic authentication (``RegisteredUsers``);
    ``lua_scripts`` are loaded too (e.g. an ``IncomingHttpRequestFilter``).
    """

    users: Mapping[str, str] = field(default_factory=dict)
    lua_scripts: tuple[Path, ...] = ()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OrthancServer:
    """Start, stop and query one Orthanc process.

    Parameters
    ----------
    workdir
        Directory for the configuration, storage, index and log.
    aet
        Orthanc's own (called) AE title; it checks the called AE title.
    allowed_callers
        Calling AE titles allowed to store, from 127.0.0.1 only.
    modality_ports
        Where Orthanc reaches a caller (its DICOM port on 127.0.0.1), by AE title: Orthanc
        sends the N-EVENT-REPORT of a Storage Commitment request there, on an association of
        its own. Callers not listed get port 104 (nothing listens there).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        aet: str = "ORTHANC",
        allowed_callers: Sequence[str] = ("CXR_TRIAGE",),
        modality_ports: Mapping[str, int] | None = None,
        dicomweb: DicomWeb | None = None,
        binary: Path = ORTHANC_BINARY,
        startup_timeout: float = 60.0,
    ) -> None:
        self.workdir = Path(workdir)
        self.aet = aet
        self.allowed_callers = tuple(allowed_callers)
        self.modality_ports = dict(modality_ports or {})
        self.dicomweb = dicomweb
        self.binary = binary
        self.startup_timeout = startup_timeout
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.log_path = self.workdir / "orthanc.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb service root (STOW-RS posts to ``{dicomweb_url}/studies``)."""
        return f"{self.rest_url}/dicom-web"

    def _dicomweb_config(self) -> dict[str, Any]:
        if self.dicomweb is None:
            return {}
        if not DICOMWEB_PLUGIN.exists():
            raise OrthancError(f"{DICOMWEB_PLUGIN} not found; install the Debian package "
                               "'orthanc-dicomweb'")
        web = self.dicomweb
        config: dict[str, Any] = {
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
            "AuthenticationEnabled": bool(web.users),
            "RegisteredUsers": dict(web.users),
            "LuaScripts": [str(path) for path in web.lua_scripts],
        }
        return config

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def config(self) -> dict[str, Any]:
        """The Orthanc configuration this server runs with."""
        modalities = {
            f"caller{i}": {"AET": caller, "Host": "127.0.0.1",
                           "Port": self.modality_ports.get(caller, 104), "AllowStore": True}
            for i, caller in enumerate(self.allowed_callers)
        }
        return {
            "Name": "cxr-triage-test",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "TemporaryDirectory": str(self.workdir / "tmp"),
            "Plugins": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowEcho": True,
            "DicomCheckModalityHost": True,
            "DicomModalities": modalities,
            "UnknownSopClassAccepted": False,
            "StorageCompression": False,
            "ConcurrentJobs": 1,
            "DicomAssociationCloseDelay": 0,
            **self._dicomweb_config(),
        }

    def start(self) -> OrthancServer:
        """Start Orthanc (again, on the same ports) and wait until its REST API answers."""
        if self.running:
            return self
        if not self.binary.exists():
            raise OrthancError(f"{self.binary} not found; install the Debian package 'orthanc'")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(self.config(), indent=2))
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [str(self.binary), str(config_path)],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
            )
        self._wait_until_ready()
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise OrthancError(f"Orthanc exited at start-up:\n{self.log_tail()}")
            try:
                self.get("/system")
                return
            except (OSError, OrthancError):
                time.sleep(0.2)
        self.kill()
        raise OrthancError(
            f"Orthanc did not answer in {self.startup_timeout} s:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 15.0) -> None:
        """Stop Orthanc gracefully (SIGTERM), killing it if it doesn't exit in time."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout)
        self._process = None

    def kill(self) -> None:
        """Kill Orthanc (SIGKILL), as a crash would."""
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait()
        self._process = None

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def get(self, path: str) -> Any:
        """GET a REST resource and decode its JSON."""
        return self._request(urllib.request.Request(self.rest_url + path))

    def post(self, path: str, body: bytes) -> Any:
        """POST ``body`` to a REST resource and decode the JSON answer."""
        return self._request(urllib.request.Request(self.rest_url + path, data=body, method="POST"))

    def _request(self, request: urllib.request.Request) -> Any:
        if self.dicomweb is not None and self.dicomweb.users:
            user, password = next(iter(self.dicomweb.users.items()))
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise OrthancError(f"{request.full_url}: HTTP {exc.code}") from exc

    def instances(self) -> list[str]:
        """Orthanc identifiers of all stored instances."""
        return list(self.get("/instances"))

    def get_instance_tags(self, instance_id: str) -> dict[str, Any]:
        """The instance's tags, keyed by keyword (``/instances/{id}/tags?simplify``)."""
        return dict(self.get(f"/instances/{instance_id}/tags?simplify"))

    def find_instance(self, sop_instance_uid: str) -> str | None:
        """The Orthanc identifier of the instance with this SOP Instance UID, if stored."""
        for hit in self.post("/tools/lookup", sop_instance_uid.encode()):
            if hit.get("Type") == "Instance":
                return str(hit["ID"])
        return None

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
