"""The model store: ensembles imported by version, and which directory a model spec names.

``import_model`` checks the manifest and every fold's SHA-256 (``training.manifest``), copies
the ensemble to ``<store>/<model_version>/`` (via a temporary folder and a rename, so a store
folder is complete or absent), checks the copy again and registers it (``db.registry``).
"""

from __future__ import annotations

import getpass
import json
import logging
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from common.errors import TriageError
from db.registry import NewModelVersion, add_model_version, get_model_version, live_model
from training.manifest import MANIFEST_FILE, EnsembleManifest, load_manifest

logger = logging.getLogger(__name__)


class ModelStoreError(TriageError):
    """A model can't be imported, found or made live."""


def current_user(explicit: str | None = None) -> str:
    """Who acts: ``--by`` when given, else the OS user."""
    if explicit:
        return explicit[:64]
    try:
        return getpass.getuser()[:64]
    except (KeyError, OSError):
        return "unknown"


def _manifest_dir(root: Path) -> Path:
    """``root`` or its single sub-folder holding ``ensemble.json`` (a tarball's top folder)."""
    if (root / MANIFEST_FILE).is_file():
        return root
    found = [p.parent for p in root.glob(f"*/{MANIFEST_FILE}")]
    if len(found) != 1:
        raise ModelStoreError(f"no {MANIFEST_FILE} at the top of the model (or of its one "
                              "folder); export the whole folder `cxr-triage train --out` wrote")
    return found[0]


def _unpack(source: Path, into: Path) -> Path:
    """Extract a tarball safely (members stay inside ``into``) and return the model folder."""
    try:
        with tarfile.open(source) as archive:
            archive.extractall(into, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise ModelStoreError(f"cannot unpack {source}: {exc}") from exc
    return _manifest_dir(into)


def _checked(directory: Path) -> EnsembleManifest:
    try:
        return load_manifest(directory, verify_hashes=True)
    except TriageError as exc:
        raise ModelStoreError(f"{exc}; the model was not imported") from exc


def raw_manifest(directory: Path) -> dict[str, Any]:
    """``ensemble.json`` as JSON (fields this version does not know included)."""
    data: dict[str, Any] = json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))
    return data


@dataclass(frozen=True)
class Imported:
    """The result of an import."""

    version: str
    directory: Path
    already: bool  # the version was in the store before


def add_to_store(sessions: sessionmaker[Session], source_dir: Path, store: Path, by: str,
                 derived_from: str | None = None) -> Imported:
    """Check ``source_dir``, copy it to ``store/<version>`` and register it."""
    manifest = _checked(source_dir)
    version = manifest.model_version
    target = store / version
    with sessions() as session:
        if get_model_version(session, version) is not None:
            return Imported(version, target, already=True)
    store.mkdir(parents=True, exist_ok=True)
    if not target.is_dir():
        staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=store))
        try:
            shutil.copytree(source_dir, staging, dirs_exist_ok=True)
            _checked(staging)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    checked = _checked(target)
    with sessions.begin() as session:
        add_model_version(session, NewModelVersion(
            version=version, label=checked.label, directory=str(target.resolve()),
            dataset_fingerprint=checked.dataset_fingerprint, threshold=checked.threshold,
            manifest=raw_manifest(target), imported_by=by, derived_from=derived_from))
    logger.info("model %s imported into %s", version, target)
    return Imported(version, target, already=False)


def import_model(sessions: sessionmaker[Session], source: Path, store: Path,
                 by: str) -> Imported:
    """``cxr-triage model import DIR|TARBALL``."""
    if source.is_dir():
        return add_to_store(sessions, _manifest_dir(source), store, by)
    if not source.is_file():
        raise ModelStoreError(f"{source} is neither a model folder nor a tarball")
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".unpack-", dir=store) as tmp:
        return add_to_store(sessions, _unpack(source, Path(tmp)), store, by)


def version_dir(sessions: sessionmaker[Session], version: str) -> Path:
    """The store folder of an imported version."""
    with sessions() as session:
        row = get_model_version(session, version)
    if row is None:
        raise ModelStoreError(f"model version {version!r} is not in the store; "
                              "`cxr-triage model list` shows them, `model import` adds one")
    return Path(row.directory)


def resolve_model(sessions: sessionmaker[Session], spec: str) -> Path:
    """A ``--model`` argument: an ensemble folder, or a version in the store."""
    path = Path(spec)
    if (path / MANIFEST_FILE).is_file():
        return path
    return version_dir(sessions, spec)


def live_model_dir(session: Session) -> tuple[str, Path] | None:
    """(version, folder) of the promoted model, or ``None`` when none was promoted."""
    row = live_model(session)
    return None if row is None else (row.version, Path(row.directory))
