"""Parsing TRIAGE_DESTINATIONS."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.deliver.destinations import (
    Destination,
    DestinationError,
    parse_destinations,
    validate_ae_title,
)


def test_single_destination() -> None:
    (dest,) = parse_destinations("PACS@127.0.0.1:4242")
    assert dest == Destination("PACS", "127.0.0.1", 4242)
    assert not dest.tls and not dest.shadow
    assert dest.label == "PACS@127.0.0.1:4242"


def test_several_destinations_with_options() -> None:
    text = (
        " PACS@pacs.example.org:104;tls;ca=/etc/ssl/ca.pem;cert=/c.pem;key=/k.pem ,"
        "RESEARCH@127.0.0.1:4242;shadow, V6@[::1]:11112;SHADOW"
    )
    pacs, research, v6 = parse_destinations(text)
    assert pacs.tls and not pacs.shadow
    assert (pacs.ca_file, pacs.cert_file, pacs.key_file) == (
        Path("/etc/ssl/ca.pem"), Path("/c.pem"), Path("/k.pem")
    )
    assert research.shadow and not research.tls
    assert (v6.host, v6.port, v6.shadow) == ("::1", 11112, True)
    assert v6.label == "V6@[::1]:11112"


def test_empty_text_means_no_destinations() -> None:
    assert parse_destinations("") == ()
    assert parse_destinations("   ") == ()


def test_ae_title_spaces_are_not_significant() -> None:
    assert validate_ae_title("  PACS ") == "PACS"
    assert parse_destinations(" PACS @h:1")[0].ae_title == "PACS"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("PACS", "cannot parse"),
        ("PACS@host", "cannot parse"),
        ("PACS@host:", "not a number"),
        ("PACS@host:0", "not a number in 1-65535"),
        ("PACS@host:65536", "1-65535"),
        ("PACS@host:10x", "not a number"),
        ("@host:104", "AE title is empty"),
        ("   @host:104", "AE title is empty"),
        ("SEVENTEEN_CHARS_X@host:104", "longer than 16"),
        ("PA\\CS@host:104", "backslash"),
        ("PA\tCS@host:104", "control"),
        ("PÄCS@host:104", "non-ASCII"),
        ("PACS@host:104;compress", "unknown or incomplete option"),
        ("PACS@host:104;ca=", "unknown or incomplete option"),
        ("PACS@host:104;ca=/x.pem", "need the tls option"),
        ("PACS@host:104;tls;key=/k.pem", "key= needs cert="),
        ("PACS@host:104;tls;tls", "given twice"),
        ("PACS@host:104,,OTHER@host:105", "empty entry"),
        ("PACS@host:104,", "empty entry"),
        ("PACS@host:104, PACS@host:104", "listed twice"),
        ("A@B@host:104", "cannot parse"),
    ],
)
def test_bad_destinations(text: str, message: str) -> None:
    with pytest.raises(DestinationError, match=message):
        parse_destinations(text)


def test_destination_checks_itself() -> None:
    with pytest.raises(DestinationError, match="port"):
        Destination("PACS", "h", 0)
    with pytest.raises(DestinationError, match="no host"):
        Destination("PACS", "", 104)
