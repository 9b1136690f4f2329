"""Where triage reports are delivered: parsing ``TRIAGE_DESTINATIONS``.

Syntax (documented in docs/sr.md)::

    AE_TITLE@HOST:PORT[;OPTION...][, AE_TITLE@HOST:PORT[;OPTION...]...]

Options are ``tls``, ``shadow``, ``ca=PATH``, ``cert=PATH`` and ``key=PATH``;
``ca``, ``cert`` and ``key`` need ``tls``. An IPv6 host is written in brackets,
``PACS@[::1]:104``. Example: ``PACS@10.0.0.5:104;tls;ca=/etc/ssl/pacs-ca.pem,
RESEARCH@127.0.0.1:4242;shadow``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from db.models import DeliveryItem
from worker.errors import WorkerError

_SYNTAX_HINT = "expected AE_TITLE@HOST:PORT[;tls][;shadow][;ca=PATH][;cert=PATH][;key=PATH]"
_ENTRY = re.compile(r"^(?P<ae>[^@]*)@(?P<host>\[[0-9A-Fa-f:.]+\]|[^:\[\]@;]+):(?P<port>[^;]*)$")
_FLAG_OPTIONS = frozenset({"tls", "shadow"})
_PATH_OPTIONS = frozenset({"ca", "cert", "key"})


class DestinationError(WorkerError):
    """A destination in ``TRIAGE_DESTINATIONS`` is malformed."""


def validate_ae_title(ae_title: str) -> str:
    """Check an AE title against the AE value representation (PS3.5 6.2).

    At most 16 characters of the default repertoire, no backslash and no
    control characters; leading and trailing spaces are not significant, so
    the stripped title is returned and must not be empty.
    """
    stripped = ae_title.strip(" ")
    if not stripped:
        raise DestinationError("AE title is empty; give 1-16 characters, e.g. PACS")
    if len(stripped) > 16:
        raise DestinationError(f"AE title {stripped!r} is longer than 16 characters")
    if "\\" in stripped or any(ord(ch) < 0x20 or ord(ch) > 0x7E for ch in stripped):
        raise DestinationError(
            f"AE title {stripped!r} holds a backslash, a control or a non-ASCII character"
        )
    return stripped


def _parse_port(text: str, entry: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise DestinationError(f"port {text!r} in {entry!r} is not a number in 1-65535")
    return int(text)


@dataclass(frozen=True)
class Destination:
    """A C-STORE peer (usually the PACS) and how to reach it.

    ``shadow`` destinations are scored and recorded but nothing is sent to them.
    """

    ae_title: str
    host: str
    port: int
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    shadow: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "ae_title", validate_ae_title(self.ae_title))
        if not self.host:
            raise DestinationError(f"destination {self.ae_title} has no host")
        if not 1 <= self.port <= 65535:
            raise DestinationError(f"destination {self.ae_title}: port {self.port} not in 1-65535")
        if not self.tls and (self.ca_file or self.cert_file or self.key_file):
            raise DestinationError(f"destination {self.ae_title}: ca/cert/key need the tls option")
        if self.key_file and not self.cert_file:
            raise DestinationError(f"destination {self.ae_title}: key= needs cert= as well")

    @property
    def items(self) -> tuple[DeliveryItem, ...]:
        """What this destination is sent of each report: the SR and the result image."""
        return (DeliveryItem.SR, DeliveryItem.IMAGE)

    @property
    def label(self) -> str:
        """``AE@host:port``, for logs and records."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"


def _parse_options(options: list[str], entry: str) -> tuple[set[str], dict[str, Path]]:
    """Split ``tls``/``shadow`` flags from ``ca=``/``cert=``/``key=`` paths."""
    flags: set[str] = set()
    paths: dict[str, Path] = {}
    for raw in options:
        option = raw.strip()
        name, sep, value = option.partition("=")
        name = name.strip().lower()
        if name in flags or name in paths:
            raise DestinationError(f"option {name!r} given twice in {entry!r}")
        if not sep and name in _FLAG_OPTIONS:
            flags.add(name)
        elif sep and name in _PATH_OPTIONS and value.strip():
            paths[name] = Path(value.strip())
        else:
            raise DestinationError(
                f"unknown or incomplete option {option!r} in {entry!r}; {_SYNTAX_HINT}"
            )
    return flags, paths


def parse_destination(entry: str) -> Destination:
    """Parse one ``AE@host:port;options`` entry."""
    entry = entry.strip()
    address, *options = entry.split(";")
    match = _ENTRY.match(address.strip())
    if match is None:
        raise DestinationError(f"cannot parse destination {entry!r}; {_SYNTAX_HINT}")
    host = match["host"].strip().strip("[]")
    port = _parse_port(match["port"].strip(), entry)
    try:
        ae_title = validate_ae_title(match["ae"])
    except DestinationError as exc:
        raise DestinationError(f"in destination {entry!r}: {exc}") from None
    flags, paths = _parse_options(options, entry)
    return Destination(
        ae_title, host, port, tls="tls" in flags, shadow="shadow" in flags,
        ca_file=paths.get("ca"), cert_file=paths.get("cert"), key_file=paths.get("key"),
    )


def parse_destinations(text: str) -> tuple[Destination, ...]:
    """Parse ``TRIAGE_DESTINATIONS``: comma-separated entries, none repeated.

    An empty or blank string gives no destinations.
    """
    entries = [part for part in text.split(",") if part.strip()]
    if text.strip() and len(entries) != len(text.split(",")):
        raise DestinationError(f"empty entry in destinations {text!r}; remove the extra comma")
    destinations = tuple(parse_destination(part) for part in entries)
    labels = [d.label for d in destinations]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise DestinationError(f"destination listed twice: {', '.join(duplicates)}")
    return destinations
