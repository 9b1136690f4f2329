"""TLS associations (PS3.15 Annex B) with and without client certificates."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import dicomgen
from tests.support.certs import Pki, make_pki
from tests.support.dcmtk import echoscu, storescu
from tests.support.node import NodeProcess
from tests.support.servers import RedisServer


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _node(tmp_path: Path, redis: RedisServer, pki: Pki, require_client: bool) -> NodeProcess:
    env = {"TRIAGE_TLS_CERT": str(pki.server_cert), "TRIAGE_TLS_KEY": str(pki.server_key)}
    if require_client:
        env["TRIAGE_TLS_CA"] = str(pki.ca_cert)
    return NodeProcess(tmp_path / "node", f"sqlite:///{tmp_path / 'n.db'}", redis.url,
                       env=env).start()


def test_tls_without_client_certificate(tmp_path: Path, pki: Pki,
                                        redis_server: RedisServer) -> None:
    node = _node(tmp_path, redis_server, pki, require_client=False)
    try:
        anonymous = ["+tla", "+cf", str(pki.ca_cert)]
        path = dicomgen.write(dicomgen.radiograph(), tmp_path / "a.dcm")
        run = storescu(node.port, [path], extra=anonymous)
        assert run.status_of(path) == 0, run.output[-2000:]
        assert "with TLS" in node.log()
        assert echoscu(node.port, calling_ae="ECHOSCU").returncode != 0  # plain TCP refused
        assert len(node.instances()) == 1
    finally:
        node.stop()


def test_tls_client_certificate_required(tmp_path: Path, pki: Pki,
                                         redis_server: RedisServer) -> None:
    node = _node(tmp_path, redis_server, pki, require_client=True)
    try:
        path = dicomgen.write(dicomgen.radiograph(), tmp_path / "a.dcm")
        anonymous = storescu(node.port, [path], extra=["+tla", "+cf", str(pki.ca_cert)])
        assert anonymous.status_of(path) is None
        with_cert = ["+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca_cert)]
        run = storescu(node.port, [path], extra=with_cert)
        assert run.status_of(path) == 0, run.output[-2000:]
        assert len(node.instances()) == 1
        assert node.echo() is False  # plain TCP is not TLS
    finally:
        node.stop()
