"""The demo puts its ensemble live the way a site does: import, then a recorded promotion."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import select

from cxr_triage.demo import DemoPaths, promote_demo_model
from db.models import ModelPromotion
from db.registry import live_model
from db.session import make_engine, make_session_factory
from tests.worker.conftest import build_ensemble
from training.manifest import load_manifest


def test_demo_imports_and_promotes_its_ensemble(tmp_path: Path) -> None:
    paths = DemoPaths(tmp_path)
    build_ensemble(paths.model, label="demo test")
    env = {**os.environ, "TRIAGE_VAR_DIR": str(tmp_path), "TRIAGE_DB_URL": paths.db_url,
           "TRIAGE_MODEL_STORE": str(tmp_path / "models")}
    promote_demo_model(paths, env)
    version = load_manifest(paths.model).model_version
    assert (tmp_path / "models" / version / "ensemble.json").is_file()
    engine = make_engine(paths.db_url)
    try:
        with make_session_factory(engine)() as session:
            live = live_model(session)
            promotion = session.scalars(select(ModelPromotion)).one()
    finally:
        engine.dispose()
    assert live is not None and live.version == version
    assert promotion.forced and promotion.promoted_by == "demo"
    assert "no local validation" in (promotion.reason or "")
