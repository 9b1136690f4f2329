"""``model import``: hashes checked, copied into the store, from a folder or a tarball."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from db.registry import get_model_version
from training.manifest import load_manifest
from worker.models.cli import gate_statistics
from worker.models.store import ModelStoreError, import_model, resolve_model


def test_import_from_a_tarball_checks_and_registers(
        tmp_path: Path, tiny_ensemble: Path, sessions: sessionmaker[Session]) -> None:
    tarball = tmp_path / "model.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(tiny_ensemble, arcname="ensemble-2026-11")
    store = tmp_path / "store"
    done = import_model(sessions, tarball, store, "tester")
    version = load_manifest(tiny_ensemble).model_version
    assert done.version == version and not done.already
    assert load_manifest(store / version).model_version == version  # hashes verified
    with sessions() as session:
        row = get_model_version(session, version)
    assert row is not None and row.imported_by == "tester" and row.directory.endswith(version)
    assert resolve_model(sessions, version) == Path(row.directory)
    assert import_model(sessions, tiny_ensemble, store, "tester").already
    assert [p.name for p in store.iterdir()] == [version]  # no staging left behind


def test_a_tampered_fold_is_refused_and_nothing_is_copied(
        tmp_path: Path, tiny_ensemble: Path, sessions: sessionmaker[Session]) -> None:
    copy = tmp_path / "tampered"
    shutil.copytree(tiny_ensemble, copy)
    fold = next(copy.glob("fold_*.safetensors"))
    fold.write_bytes(fold.read_bytes()[:-1] + b"\0")
    store = tmp_path / "store"
    with pytest.raises(ModelStoreError, match="does not match its sha256"):
        import_model(sessions, copy, store, "tester")
    assert not store.exists() or list(store.iterdir()) == []
    with pytest.raises(ModelStoreError, match="not in the store"):
        resolve_model(sessions, load_manifest(tiny_ensemble).model_version)


def test_gate_statistics_are_shown_whatever_their_fields() -> None:
    manifest = {"threshold": 0.3, "ood_gate": {"threshold": 12.5, "percentile": 99.0,
                                               "folds": [{"file": "x"}]}}
    assert gate_statistics(manifest) == "ood_gate(threshold=12.5, percentile=99)"
    assert gate_statistics({"threshold": 0.3}) == "-"
