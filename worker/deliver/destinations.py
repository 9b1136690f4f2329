"""Where triage reports are delivered: parsing ``TRIAGE_DESTINATIONS``.

Comma-separated entries of three kinds, mixed freely (docs/operations.md, docs/sr.md)::

    AE_TITLE@HOST:PORT[;tls][;shadow][;ca=PATH][;cert=PATH][;key=PATH][;commit]   C-STORE
    stow+https://HOST[:PORT]/PATH[;ca=PATH][;token=PATH|;basic=PATH][;timeout=S][;shadow]
    hl7://HOST:PORT[;tls][;ca=PATH][;shadow][;...]                              HL7 v2 (MLLP)

C-STORE: ``ca``, ``cert`` and ``key`` need ``tls``; ``commit`` asks for Storage Commitment
after each successful C-STORE. An IPv6 host is written in brackets, ``PACS@[::1]:104``.
STOW-RS (PS3.18 10.5): ``stow+http://`` is allowed too; ``token=`` names a file holding a bearer
token, ``basic=`` a file holding ``user:password`` (credentials never go in the URL or the
environment value itself); ``timeout`` overrides ``TRIAGE_DELIVERY_TIMEOUT_S``. HL7 entries are
parsed by ``worker.deliver.hl7.parse_hl7_destination``. Example: ``PACS@10.0.0.5:104;tls;
ca=/etc/ssl/pacs-ca.pem;commit, stow+https://archive.example.org/dicom-web;token=/etc/cxr-triage/
archive.token, RESEARCH@127.0.0.1:4242;shadow``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias
from urllib.parse import urlsplit

from db.models import DeliveryItem
from worker.errors import WorkerError

if TYPE_CHECKING:
    from worker.deliver.hl7 import Hl7Destination

_SYNTAX_HINT = ("expected AE_TITLE@HOST:PORT[;tls][;shadow][;ca=PATH][;cert=PATH][;key=PATH]"
                "[;commit], stow+https://HOST[:PORT]/PATH[;...] or hl7://HOST:PORT[;...]")
_ENTRY = re.compile(r"^(?P<ae>[^@]*)@(?P<host>\[[0-9A-Fa-f:.]+\]|[^:\[\]@;]+):(?P<port>[^;]*)$")
_FLAG_OPTIONS = frozenset({"tls", "shadow", "commit"})
_PATH_OPTIONS = frozenset({"ca", "cert", "key"})
STOW_PREFIX = "stow+"
HL7_PREFIX = "hl7://"
LABEL_LENGTH = 160  # delivery.destination
_STOW_FLAGS = frozenset({"shadow"})
_STOW_VALUES = frozenset({"ca", "token", "basic", "timeout"})
_STOW_HINT = ("expected stow+https://HOST[:PORT]/PATH[;ca=PATH][;token=PATH|;basic=PATH]"
              "[;timeout=S][;shadow]")


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


def parse_port(text: str, entry: str) -> int:
    """A TCP port of an entry, 1-65535."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise DestinationError(f"port {text!r} in {entry!r} is not a number in 1-65535")
    return int(text)


def parse_seconds(text: str, entry: str) -> float:
    """A ``timeout=`` value of an entry, in seconds."""
    try:
        return float(text)
    except ValueError:
        raise DestinationError(f"timeout={text!r} in {entry!r} is not a number of seconds") \
            from None


def split_options(options: Iterable[str], entry: str, *, flags: frozenset[str],
                  values: frozenset[str], hint: str) -> tuple[set[str], dict[str, str]]:
    """The ``;`` options of an entry: bare ``flags`` and ``name=value`` ``values`` (names
    case-insensitive, each at most once); anything else is an error that shows ``hint``."""
    found_flags: set[str] = set()
    found_values: dict[str, str] = {}
    for raw in options:
        option = raw.strip()
        name, sep, value = option.partition("=")
        name = name.strip().lower()
        if name in found_flags or name in found_values:
            raise DestinationError(f"option {name!r} given twice in {entry!r}")
        if not sep and name in flags:
            found_flags.add(name)
        elif sep and name in values and value.strip():
            found_values[name] = value.strip()
        else:
            raise DestinationError(f"unknown or incomplete option {option!r} in {entry!r}; {hint}")
    return found_flags, found_values


def check_tls_files(where: str, *, tls: bool, ca_file: Path | None, cert_file: Path | None,
                    key_file: Path | None) -> None:
    """``ca=``/``cert=``/``key=`` need ``tls``, and ``key=`` needs ``cert=``."""
    if not tls and (ca_file or cert_file or key_file):
        raise DestinationError(f"{where}: ca/cert/key need the tls option")
    if key_file and not cert_file:
        raise DestinationError(f"{where}: key= needs cert= as well")


@dataclass(frozen=True)
class Destination:
    """A C-STORE peer (usually the PACS) and how to reach it.

    ``shadow`` destinations are scored and recorded but nothing is sent to them; ``commit``
    asks for Storage Commitment (PS3.4 J) after each successful C-STORE.
    """

    ae_title: str
    host: str
    port: int
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    shadow: bool = False
    commit: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "ae_title", validate_ae_title(self.ae_title))
        if not self.host:
            raise DestinationError(f"destination {self.ae_title} has no host")
        if not 1 <= self.port <= 65535:
            raise DestinationError(f"destination {self.ae_title}: port {self.port} not in 1-65535")
        check_tls_files(f"destination {self.ae_title}", tls=self.tls, ca_file=self.ca_file,
                        cert_file=self.cert_file, key_file=self.key_file)

    @property
    def items(self) -> tuple[DeliveryItem, ...]:
        """What this destination is sent of each report: the SR and the result image."""
        return (DeliveryItem.SR, DeliveryItem.IMAGE)

    @property
    def label(self) -> str:
        """``AE@host:port``, for logs and records."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"


def parse_destination(entry: str) -> Destination:
    """Parse one ``AE@host:port;options`` entry."""
    entry = entry.strip()
    address, *options = entry.split(";")
    match = _ENTRY.match(address.strip())
    if match is None:
        raise DestinationError(f"cannot parse destination {entry!r}; {_SYNTAX_HINT}")
    host = match["host"].strip().strip("[]")
    port = parse_port(match["port"].strip(), entry)
    try:
        ae_title = validate_ae_title(match["ae"])
    except DestinationError as exc:
        raise DestinationError(f"in destination {entry!r}: {exc}") from None
    flags, values = split_options(options, entry, flags=_FLAG_OPTIONS, values=_PATH_OPTIONS,
                                  hint=_SYNTAX_HINT)
    paths = {name: Path(value) for name, value in values.items()}
    return Destination(
        ae_title, host, port, tls="tls" in flags, shadow="shadow" in flags,
        ca_file=paths.get("ca"), cert_file=paths.get("cert"), key_file=paths.get("key"),
        commit="commit" in flags,
    )


@dataclass(frozen=True)
class StowDestination:
    """A DICOMweb STOW-RS service (PS3.18 10.5) and how to reach it.

    ``url`` is the service root (``https://host:port/dicom-web``); instances are POSTed to
    ``{url}/studies/{StudyInstanceUID}``. ``token_file`` holds a bearer token, ``basic_file``
    ``user:password``; both are read at each attempt, so a rotated token needs no restart.
    ``timeout_s`` is the HTTP connect and read timeout (``None``: the worker's setting).
    """

    url: str
    ca_file: Path | None = None
    token_file: Path | None = None
    basic_file: Path | None = None
    timeout_s: float | None = None
    shadow: bool = False

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DestinationError(f"STOW-RS URL {self.url!r} needs http:// or https:// and a host")
        if parts.username is not None or parts.password is not None:
            raise DestinationError(f"STOW-RS URL {self.url!r} holds credentials; put them in a "
                                   "file and name it with basic= (or token= for a bearer token)")
        if parts.query or parts.fragment:
            raise DestinationError(f"STOW-RS URL {self.url!r}: no query or fragment allowed")
        try:
            _ = parts.port
        except ValueError:
            raise DestinationError(f"STOW-RS URL {self.url!r}: bad port") from None
        if self.ca_file is not None and parts.scheme != "https":
            raise DestinationError(f"STOW-RS destination {self.url}: ca= needs https")
        if self.token_file is not None and self.basic_file is not None:
            raise DestinationError(f"STOW-RS destination {self.url}: give token= or basic=, "
                                   "not both")
        if self.timeout_s is not None and not (math.isfinite(self.timeout_s)
                                               and self.timeout_s > 0):
            raise DestinationError(f"STOW-RS destination {self.url}: timeout must be > 0 s")
        if len(self.label) > LABEL_LENGTH:
            raise DestinationError(f"STOW-RS destination {self.label[:40]}...: longer than "
                                   f"{LABEL_LENGTH} characters; use a shorter URL")

    @property
    def items(self) -> tuple[DeliveryItem, ...]:
        """What this destination is sent of each report: the SR and the result image."""
        return (DeliveryItem.SR, DeliveryItem.IMAGE)

    @property
    def label(self) -> str:
        """``stow+`` and the URL (never a credential), for logs and records."""
        return STOW_PREFIX + self.url


def parse_stow_destination(entry: str) -> StowDestination:
    """Parse one ``stow+https://host:port/path;options`` entry."""
    entry = entry.strip()
    address, *options = entry.split(";")
    url = address.strip()[len(STOW_PREFIX):].rstrip("/")
    flags, values = split_options(options, entry, flags=_STOW_FLAGS, values=_STOW_VALUES,
                                  hint=_STOW_HINT)
    timeout = parse_seconds(values["timeout"], entry) if "timeout" in values else None

    def path(name: str) -> Path | None:
        return Path(values[name]) if name in values else None

    return StowDestination(url, ca_file=path("ca"), token_file=path("token"),
                           basic_file=path("basic"), timeout_s=timeout,
                           shadow="shadow" in flags)


AnyDestination: TypeAlias = "Destination | StowDestination | Hl7Destination"


def parse_any_destination(entry: str) -> AnyDestination:
    """One entry of any kind: STOW-RS, HL7 or C-STORE (by its prefix)."""
    stripped = entry.strip()
    lowered = stripped.lower()
    if lowered.startswith(STOW_PREFIX):
        return parse_stow_destination(stripped)
    if lowered.startswith(HL7_PREFIX):
        try:  # imported here: worker.deliver.hl7 builds on this module
            from worker.deliver.hl7 import parse_hl7_destination
        except ImportError as exc:
            raise DestinationError(f"cannot use {stripped!r}: HL7 support is not installed "
                                   f"({exc})") from exc
        return parse_hl7_destination(stripped)
    return parse_destination(stripped)


def parse_destinations(text: str) -> tuple[AnyDestination, ...]:
    """Parse ``TRIAGE_DESTINATIONS``: comma-separated entries of any kind, none repeated.

    An empty or blank string gives no destinations.
    """
    entries = [part for part in text.split(",") if part.strip()]
    if text.strip() and len(entries) != len(text.split(",")):
        raise DestinationError(f"empty entry in destinations {text!r}; remove the extra comma")
    destinations = tuple(parse_any_destination(part) for part in entries)
    labels = [d.label for d in destinations]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise DestinationError(f"destination listed twice: {', '.join(duplicates)}")
    return destinations
