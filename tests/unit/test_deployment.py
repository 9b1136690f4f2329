"""docker/compose.yml against the code: no Docker engine runs here, so check it statically."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cxr_triage.cli import build_parser
from cxr_triage.settings_catalog import settings_read_by_code

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker" / "compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _ours(service: dict[str, Any]) -> bool:
    return "build" in service or str(service.get("image", "")).startswith("cxr-triage")


def test_every_service_has_an_image_or_a_build(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "postgres", "orthanc", "node", "worker-gpu", "worker-deliver",
            "rescore-nightly"} <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        build = service.get("build")
        if build:
            context = (COMPOSE.parent / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), name
            assert (context / "pyproject.toml").is_file(), name


def test_environment_only_sets_what_the_code_reads(compose: dict[str, Any]) -> None:
    known = settings_read_by_code()
    assert {"TRIAGE_DB_URL", "TRIAGE_BROKER_URL", "TRIAGE_MODEL_DIR"} <= known
    for name, service in compose["services"].items():
        if not _ours(service):
            continue
        env = service.get("environment", {})
        assert env, name
        unknown = {key for key in env if key.startswith("TRIAGE_")} - known
        assert not unknown, f"{name} sets settings no code reads: {unknown}"
        assert {"TRIAGE_DB_URL", "TRIAGE_BROKER_URL", "TRIAGE_STORAGE_DIR"} <= set(env), name


def test_shared_storage_volume_and_healthchecks(compose: dict[str, Any]) -> None:
    services, volumes = compose["services"], compose["volumes"]
    mounts: dict[str, set[str]] = {}
    for name, service in services.items():
        for mount in service.get("volumes", []):
            source, target = mount.split(":")[:2]
            if not source.startswith((".", "/")):
                assert source in volumes, f"{name} mounts undeclared volume {source}"
            mounts.setdefault(source, set()).add(name)
            storage = service.get("environment", {}).get("TRIAGE_STORAGE_DIR")
            if source == "storage" and storage:
                assert storage.startswith(target.rstrip("/") + "/"), name
    assert {"node", "worker-gpu", "worker-deliver"} <= mounts["storage"]
    for name in ("node", "worker-gpu", "worker-deliver"):
        assert "healthcheck" in services[name], name
    assert "echoscu" in services["node"]["healthcheck"]["test"]
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert "gpu" in gpu["capabilities"]


def test_commands_are_real_cli_commands(compose: dict[str, Any]) -> None:
    parser = build_parser()
    for name, service in compose["services"].items():
        if not _ours(service):
            continue
        args = parser.parse_args(service["command"])
        assert callable(args.func), name
        if args.command == "nightly":  # the scheduled command must parse too
            scheduled = [part for part in args.command_line if part != "--"]
            assert callable(parser.parse_args(scheduled).func), name
        test = service.get("healthcheck", {}).get("test", [])
        if test[:2] == ["CMD", "cxr-triage"]:
            assert callable(parser.parse_args(test[2:]).func), name


def test_dockerfiles_install_the_package() -> None:
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        text = (ROOT / "docker" / dockerfile).read_text()
        assert re.search(r"pip install .*-c constraints\.txt", text), dockerfile
        assert 'ENTRYPOINT ["cxr-triage"]' in text
        for package in ("cxr_triage", "db", "dicom_node", "worker", "training"):
            assert f"COPY {package} " in text, (dockerfile, package)
    assert "nvidia/cuda" in (ROOT / "docker" / "Dockerfile.gpu").read_text()


def test_readme_lists_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = sorted(name for name in settings_read_by_code() if f"`{name}`" not in readme)
    assert not missing, f"README configuration table lacks {missing}"


def test_only_the_migrate_service_migrates(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["migrate"]["command"] == ["db", "upgrade"]
    for name, service in services.items():
        if _ours(service) and name != "migrate":
            assert "upgrade" not in service["command"], name
            depends = service["depends_on"]["migrate"]
            assert depends == {"condition": "service_completed_successfully"}, name
