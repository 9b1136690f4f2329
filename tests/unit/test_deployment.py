"""docker/compose.yml against the code: no Docker engine runs here, so check it statically."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cxr_triage.cli import build_parser
from tests.support.settings_catalog import settings_read_by_code

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker" / "compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _ours(service: dict[str, Any]) -> bool:
    return "build" in service or str(service.get("image", "")).startswith("cxr-triage")


def test_every_service_has_an_image_or_a_build(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "postgres", "orthanc", "migrate", "node", "worker-gpu", "worker-cpu",
            "worker-deliver", "rescore-nightly", "admin"} <= set(services)
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
            if not source.startswith((".", "/", "$")):
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
        for package in ("common", "cxr_triage", "db", "dicom_node", "worker", "training", "web"):
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


LONG_RUNNING = ("redis", "postgres", "orthanc", "node", "worker-gpu", "worker-cpu",
                "worker-deliver", "rescore-nightly")


def test_restart_policies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in LONG_RUNNING:
        assert services[name].get("restart") in ("unless-stopped", "always"), name
    for name in ("migrate", "admin"):  # one-shot: a restart would loop
        assert services[name]["restart"] == "no", name


def _dockerfile(service: dict[str, Any]) -> str:
    build = service.get("build") or {}
    name = build.get("dockerfile", "docker/Dockerfile")
    if not build:  # image only: the build of the service that builds the same image
        name = "docker/Dockerfile.gpu" if service["image"].endswith(":gpu") else "docker/Dockerfile"
    return (ROOT / name).read_text()


def test_volumes_are_owned_by_the_image_user(compose: dict[str, Any]) -> None:
    """Named volumes start as a copy of the image's folder: it must exist and be uid 10001's."""
    for name, service in compose["services"].items():
        if not _ours(service):
            continue
        text = _dockerfile(service)
        assert re.search(r"^USER 10001$", text, re.MULTILINE), name
        chown = re.search(r"chown -R 10001:10001 ([^\n]+)", text)
        assert chown, name
        owned = chown[1].split()
        made = re.search(r"mkdir -p ([^\n&]+)", text)
        assert made, name
        for mount in service.get("volumes", []):
            source, target = mount.split(":")[:2]
            if source.startswith((".", "/")):
                continue  # a bind mount of the operator's folder (read-only)
            assert any(target == o or target.startswith(o.rstrip("/") + "/") for o in owned), (
                name, target)
            assert target in made[1].split() or any(
                m.startswith(target + "/") for m in made[1].split()), (name, target)


def _torch_cuda() -> str:
    """CUDA major.minor of the pinned torch build: its pinned CUDA runtime wheel (PyPI's Linux
    torch 2.14.1 requires the CUDA 13 wheels; torch.version.cuda says "13.0")."""
    pins = (ROOT / "constraints.txt").read_text()
    runtime = re.search(r"^nvidia-cuda-runtime==(\d+)\.(\d+)\.", pins, re.MULTILINE)
    assert runtime, "constraints.txt pins no nvidia-cuda-runtime"
    return f"{runtime[1]}.{runtime[2]}"


def test_cpu_and_gpu_images_pull_the_right_torch(compose: dict[str, Any]) -> None:
    cpu = (ROOT / "docker" / "Dockerfile").read_text()
    gpu = (ROOT / "docker" / "Dockerfile.gpu").read_text()
    pinned = re.search(r"^torch==(\S+)$", (ROOT / "constraints.txt").read_text(), re.MULTILINE)
    assert pinned
    # CPU: torch from the CPU wheel index, before the package, at the pinned version.
    assert "download.pytorch.org/whl/cpu" in cpu
    assert re.search(rf"--index-url \S+ torch=={re.escape(pinned[1])} torchvision==", cpu)
    assert cpu.index("whl/cpu") < cpu.index("-c constraints.txt")
    assert "assert not torch.version.cuda" in cpu
    # GPU: the CUDA base image has the CUDA version torch was built for.
    cuda = _torch_cuda()
    base = re.search(r"^FROM nvidia/cuda:(\d+\.\d+)\.\d+-", gpu, re.MULTILINE)
    assert base and base[1] == cuda, (base and base[1], cuda)
    assert f"torch.version.cuda == '{cuda}'" in gpu
    services = compose["services"]
    assert services["worker-cpu"]["image"] == "cxr-triage:cpu"
    assert services["worker-gpu"]["image"] == "cxr-triage:gpu"


def test_a_cpu_scoring_service_for_hosts_without_a_gpu(compose: dict[str, Any]) -> None:
    services = compose["services"]
    parser = build_parser()
    for name, device, profile in (("worker-cpu", "cpu", "cpu"), ("worker-gpu", "cuda", "gpu")):
        args = parser.parse_args(services[name]["command"])
        assert args.queues == "score" and args.device == device, name
        assert services[name]["profiles"] == [profile], name
    assert "deploy" not in services["worker-cpu"]


def test_node_healthcheck_survives_a_hospital_allow_list(compose: dict[str, Any]) -> None:
    """The healthcheck's AE is the loopback-only, echo-only one, not an allow-list entry."""
    from dicom_node.admission import VERIFICATION_SOP_CLASS, Admission
    from dicom_node.settings import NodeSettings

    node = compose["services"]["node"]
    test = node["healthcheck"]["test"]
    calling = test[test.index("-aet") + 1]
    env = {k: str(v) for k, v in node["environment"].items()}
    env["TRIAGE_ALLOWED_AETS"] = "CR_ROOM1,DX_ROOM2"  # a hospital's modalities only
    settings = NodeSettings.from_env(env)
    assert calling == settings.healthcheck_aet and calling not in settings.allowed_aets
    assert test[test.index("-aec") + 1] == settings.ae_title
    assert "127.0.0.1" in test
    admission = Admission(frozenset(settings.allowed_aets), settings.allow_any_aet,
                          settings.healthcheck_aet)
    assert admission.refusal(calling, "127.0.0.1", [VERIFICATION_SOP_CLASS]) is None
    assert admission.refusal(calling, "10.1.2.3", [VERIFICATION_SOP_CLASS]) is not None
    assert admission.refusal(calling, "127.0.0.1", ["1.2.840.10008.5.1.4.1.1.1"]) is not None


def test_orthanc_rest_is_not_published_without_authentication(compose: dict[str, Any]) -> None:
    orthanc = compose["services"]["orthanc"]
    env = orthanc["environment"]
    published = [str(p) for p in orthanc.get("ports", [])]
    assert env["ORTHANC__AUTHENTICATION_ENABLED"] == "true"
    assert not any("8042" in p for p in published) or "ORTHANC__REGISTERED_USERS" in env


def test_documented_model_commands_are_real(compose: dict[str, Any]) -> None:
    """The compose header and docs/install.md use the model store's real commands."""
    parser = build_parser()
    texts = (COMPOSE.read_text(), (ROOT / "docs" / "install.md").read_text())
    found = set()
    for text in texts:
        for match in re.finditer(r"run --rm admin ((?:model|purge) [^\n`]*)", text):
            argv = match[1].split()
            argv = ["VERSION" if a == "VERSION" else a for a in argv]
            args = parser.parse_args(argv)
            assert callable(args.func), match[0]
            found.add(" ".join(argv[:2]))
    assert {"model import", "model list", "model promote", "model rollback"} <= found
    admin = compose["services"]["admin"]
    assert any(m.endswith(":/models") for m in admin["volumes"])  # import writes the store


SYSTEMD = ROOT / "docker" / "systemd"


def test_systemd_units_run_real_commands_after_the_migration() -> None:
    parser = build_parser()
    units = sorted(SYSTEMD.glob("*.service"))
    assert {u.name for u in units} >= {"cxr-triage-migrate.service", "cxr-triage-node.service",
                                       "cxr-triage-worker@.service"}
    for unit in units:
        text = unit.read_text()
        (exec_start,) = re.findall(r"^ExecStart=\S+/cxr-triage (.+)$", text, re.MULTILINE)
        argv = [("score" if part == "%i" else part) for part in exec_start.split()]
        args = parser.parse_args(argv)
        assert callable(args.func), unit.name
        assert "EnvironmentFile=/etc/cxr-triage/env" in text, unit.name
        assert re.search(r"^User=cxr-triage$", text, re.MULTILINE), unit.name
        if unit.name == "cxr-triage-migrate.service":
            assert argv == ["db", "upgrade"] and "Type=oneshot" in text
        else:
            assert "Requires=cxr-triage-migrate.service" in text, unit.name
            assert "Restart=on-failure" in text, unit.name
    known = settings_read_by_code()
    example = (SYSTEMD / "env.example").read_text()
    names = re.findall(r"^(TRIAGE_\w+)=", example, re.MULTILINE)
    assert names and set(names) <= known, set(names) - known
