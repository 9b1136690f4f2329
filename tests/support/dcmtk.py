"""dcmtk's storescu and echoscu as the modality: run them and read back per-file statuses."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread

# storescu proposes compressed transfer syntaxes only when asked, one family per run.
_PROPOSE_FLAG = {
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.57": "-xs",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.5": "-xr",
}
_SENDING = re.compile(r"^I: Sending file: (.+)$")
_STATUS = re.compile(r"^D: DIMSE Status\s*: 0x([0-9a-fA-F]{4})")
_FAILED = re.compile(r"^E: Store Failed, file: (.+):$")


@dataclass
class StoreRun:
    """What storescu reported: the DIMSE status per file (``None``: no response)."""

    returncode: int
    output: str
    statuses: dict[str, int | None] = field(default_factory=dict)

    def status_of(self, path: Path) -> int | None:
        return self.statuses.get(str(path))

    @property
    def succeeded(self) -> list[str]:
        return [name for name, status in self.statuses.items() if status == 0]


def parse_storescu(output: str) -> dict[str, int | None]:
    """Map each file storescu tried to send to the status it got back."""
    statuses: dict[str, int | None] = {}
    current: str | None = None
    for line in output.splitlines():
        if match := _SENDING.match(line):
            current = match.group(1)
            statuses[current] = None
        elif (match := _STATUS.match(line)) and current is not None:
            statuses[current] = int(match.group(1), 16)
            current = None
        elif match := _FAILED.match(line):
            statuses.setdefault(match.group(1), None)
    return statuses


def transfer_syntax_of(path: Path) -> str:
    meta = dcmread(path, stop_before_pixels=True, force=True).file_meta
    return str(meta.get("TransferSyntaxUID", "1.2.840.10008.1.2"))


def storescu(
    port: int,
    files: Sequence[Path],
    *,
    calling_ae: str = "STORESCU",
    called_ae: str = "CXR_TRIAGE",
    host: str = "127.0.0.1",
    extra: Sequence[str] = (),
    timeout: float = 300,
) -> StoreRun:
    """Send ``files`` over one association per transfer-syntax family and collect statuses."""
    groups: dict[str, list[Path]] = {}
    for path in files:
        flag = _PROPOSE_FLAG.get(transfer_syntax_of(path), "")
        groups.setdefault(flag, []).append(path)
    run = StoreRun(returncode=0, output="")
    for flag, paths in groups.items():
        command = ["storescu", "-d", "-nh", "-aet", calling_ae, "-aec", called_ae, *extra]
        command += [flag] if flag else []
        command += [host, str(port), *map(str, paths)]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        run.output += proc.stdout + proc.stderr
        run.returncode = run.returncode or proc.returncode
        run.statuses.update(parse_storescu(proc.stdout + proc.stderr))
    return run


def echoscu(
    port: int,
    *,
    calling_ae: str = "STORESCU",
    called_ae: str = "CXR_TRIAGE",
    extra: Sequence[str] = (),
    timeout: float = 30,
) -> subprocess.CompletedProcess[str]:
    """One C-ECHO; ``returncode == 0`` on success."""
    command = ["echoscu", "-aet", calling_ae, "-aec", called_ae, *extra, "127.0.0.1", str(port)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)
