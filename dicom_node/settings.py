"""Node settings, read from ``TRIAGE_*`` environment variables (CLI flags override)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from common.config import (
    default_var_dir,
    env_bool,
    env_float,
    env_int,
    env_list,
    env_opt_path,
    env_path,
    env_str,
)
from common.queues import DEFAULT_SCORE_LEASE_S, BrokerSettings
from db.settings import DbSettings, default_db_url


@dataclass(frozen=True)
class TlsSettings:
    """TLS for the listener: certificate and key; a CA makes client certificates mandatory."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.cert is not None


@dataclass(frozen=True)
class NodeSettings:
    """Everything ``cxr-triage node`` needs. See the README's configuration table."""

    ae_title: str = "CXR_TRIAGE"
    host: str = "127.0.0.1"
    port: int = 11112
    storage_dir: Path = dataclasses.field(default_factory=lambda: default_var_dir() / "storage")
    allowed_aets: tuple[str, ...] = ()
    allow_any_aet: bool = False
    healthcheck_aet: str = "CXR_HEALTHCHECK"  # C-ECHO only, from loopback only
    accept_secondary_capture: bool = False
    strict_uids: bool = False
    max_associations: int = 25
    max_associations_per_host: int = 10
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 60.0
    max_pdu: int = 262144
    min_free_bytes: int = 256 * 1024 * 1024
    filter_file: Path | None = None
    sweep_interval_s: float = 30.0
    sweep_after_s: float = 60.0
    score_lease_s: float = DEFAULT_SCORE_LEASE_S
    commitment_timeout_s: float = 3600.0  # a Storage Commitment without a report: timed_out
    tls: TlsSettings = TlsSettings()
    db: DbSettings = dataclasses.field(default_factory=lambda: DbSettings(default_db_url()))
    broker: BrokerSettings = dataclasses.field(default_factory=BrokerSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> NodeSettings:
        d = cls()  # every default is written once, on the fields above
        return cls(
            ae_title=env_str(env, "AE_TITLE", d.ae_title),
            host=env_str(env, "HOST", d.host),
            port=env_int(env, "PORT", d.port),
            storage_dir=env_path(env, "STORAGE_DIR", d.storage_dir),
            allowed_aets=env_list(env, "ALLOWED_AETS", d.allowed_aets),
            allow_any_aet=env_bool(env, "ALLOW_ANY_AET", d.allow_any_aet),
            healthcheck_aet=env_str(env, "HEALTHCHECK_AET", d.healthcheck_aet).strip(),
            accept_secondary_capture=env_bool(env, "ACCEPT_SECONDARY_CAPTURE",
                                              d.accept_secondary_capture),
            strict_uids=env_bool(env, "STRICT_UIDS", d.strict_uids),
            max_associations=env_int(env, "MAX_ASSOCIATIONS", d.max_associations),
            max_associations_per_host=env_int(env, "MAX_ASSOCIATIONS_PER_HOST",
                                              d.max_associations_per_host),
            acse_timeout_s=env_float(env, "ACSE_TIMEOUT_S", d.acse_timeout_s),
            dimse_timeout_s=env_float(env, "DIMSE_TIMEOUT_S", d.dimse_timeout_s),
            network_timeout_s=env_float(env, "NETWORK_TIMEOUT_S", d.network_timeout_s),
            max_pdu=env_int(env, "MAX_PDU", d.max_pdu),
            min_free_bytes=env_int(env, "MIN_FREE_BYTES", d.min_free_bytes),
            filter_file=env_opt_path(env, "FILTER_FILE"),
            sweep_interval_s=env_float(env, "SWEEP_INTERVAL_S", d.sweep_interval_s),
            sweep_after_s=env_float(env, "SWEEP_AFTER_S", d.sweep_after_s),
            score_lease_s=env_float(env, "SCORE_LEASE_S", d.score_lease_s),
            commitment_timeout_s=env_float(env, "COMMITMENT_TIMEOUT_S", d.commitment_timeout_s),
            tls=TlsSettings(
                cert=env_opt_path(env, "TLS_CERT"),
                key=env_opt_path(env, "TLS_KEY"),
                ca=env_opt_path(env, "TLS_CA"),
            ),
            db=DbSettings.from_env(env),
            broker=BrokerSettings.from_env(env),
        )
