"""Parsing TRIAGE_DESTINATIONS."""

from __future__ import annotations

from pathlib import Path

import pytest

from db.models import DeliveryItem
from worker.deliver.destinations import (
    Destination,
    DestinationError,
    StowDestination,
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


def test_commit_flag() -> None:
    plain, committed = parse_destinations("PACS@h:104, ARCHIVE@h:105;tls;commit")
    assert not plain.commit
    assert isinstance(committed, Destination) and committed.commit and committed.tls


def test_stow_destinations() -> None:
    text = ("stow+https://archive.example.org:8443/dicom-web/;ca=/etc/ssl/ca.pem;"
            "token=/etc/cxr-triage/archive.token;timeout=20, "
            "stow+http://127.0.0.1:8042/dicom-web;basic=/run/secrets/orthanc;shadow")
    archive, local = parse_destinations(text)
    assert archive == StowDestination("https://archive.example.org:8443/dicom-web",
                                      ca_file=Path("/etc/ssl/ca.pem"),
                                      token_file=Path("/etc/cxr-triage/archive.token"),
                                      timeout_s=20.0)
    assert archive.label == "stow+https://archive.example.org:8443/dicom-web"
    assert archive.items == (DeliveryItem.SR, DeliveryItem.IMAGE) and not archive.shadow
    assert isinstance(local, StowDestination) and local.shadow
    assert local.basic_file == Path("/run/secrets/orthanc") and local.token_file is None


def test_kinds_mixed_and_hl7_dispatched() -> None:
    cstore, stow, hl7 = parse_destinations(
        "PACS@10.0.0.5:104;commit, stow+https://a.example/dicom-web, hl7://ris.example:2575")
    assert isinstance(cstore, Destination) and isinstance(stow, StowDestination)
    assert hl7.label == "hl7://ris.example:2575" and hl7.items == (DeliveryItem.HL7,)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stow+ftp://h/x", "needs http:// or https://"),
        ("stow+https:///x", "needs http:// or https://"),
        ("stow+https://user:pw@h/dicom-web", "holds credentials"),
        ("stow+https://h/dicom-web?token=x", "no query"),
        ("stow+https://h:99999/x", "bad port"),
        ("stow+http://h/x;ca=/ca.pem", "ca= needs https"),
        ("stow+https://h/x;token=/t;basic=/b", "not both"),
        ("stow+https://h/x;timeout=0", "timeout must be > 0"),
        ("stow+https://h/x;timeout=soon", "not a number of seconds"),
        ("stow+https://h/x;tls", "unknown or incomplete option"),
        ("stow+https://h/x;token=", "unknown or incomplete option"),
        ("stow+https://h/x;shadow;shadow", "given twice"),
        ("stow+https://h/" + "x" * 160, "longer than 160"),
        ("stow+https://h/x, stow+https://h/x/", "listed twice"),
    ],
)
def test_bad_stow_destinations(text: str, message: str) -> None:
    with pytest.raises(DestinationError, match=message):
        parse_destinations(text)
