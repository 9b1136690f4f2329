"""Settings from TRIAGE_* variables, defaults that need no server, CLI overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import SettingError, apply_overrides
from cxr_triage.cli import build_parser
from dicom_node.admission import Admission
from dicom_node.settings import NodeSettings


def test_defaults_need_no_server() -> None:
    settings = NodeSettings.from_env({})
    assert settings.db.url.startswith("sqlite:///") and settings.db.url.endswith("var/triage.db")
    assert settings.broker.is_filesystem
    assert settings.storage_dir == Path("var/storage")
    assert settings.allowed_aets == () and settings.allow_any_aet is False
    assert settings.max_associations >= 25


def test_environment_read() -> None:
    settings = NodeSettings.from_env(
        {
            "TRIAGE_PORT": "4242",
            "TRIAGE_AE_TITLE": "NODE",
            "TRIAGE_ALLOWED_AETS": "CR1, DX2 ,",
            "TRIAGE_DB_URL": "postgresql://x@127.0.0.1/db",
            "TRIAGE_BROKER_URL": "redis://127.0.0.1:6379/0",
            "TRIAGE_ACCEPT_SECONDARY_CAPTURE": "yes",
            "TRIAGE_TLS_CERT": "/c.pem",
        }
    )
    assert settings.port == 4242 and settings.ae_title == "NODE"
    assert settings.allowed_aets == ("CR1", "DX2")
    assert settings.db.url == "postgresql://x@127.0.0.1/db"
    assert not settings.broker.is_filesystem
    assert settings.accept_secondary_capture and settings.tls.enabled


def test_overrides_only_when_given() -> None:
    base = NodeSettings.from_env({"TRIAGE_PORT": "4242"})
    settings = apply_overrides(base, port=None, host="::1")
    assert settings.port == 4242 and settings.host == "::1"


@pytest.mark.parametrize(("name", "value"), [("PORT", "abc"), ("ALLOW_ANY_AET", "maybe")])
def test_bad_values_named(name: str, value: str) -> None:
    with pytest.raises(SettingError, match=f"TRIAGE_{name}"):
        NodeSettings.from_env({f"TRIAGE_{name}": value})


def test_admission_denies_by_default() -> None:
    assert Admission(frozenset()).refusal("ANY") is not None
    assert Admission(frozenset({"CR1"})).refusal("CR1 ") is None
    assert Admission(frozenset({"CR1"})).refusal("DX2") is not None
    assert Admission(frozenset(), allow_any=True).refusal("ANY") is None


def test_cli_has_each_package_command() -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"node", "db"} <= set(commands)
