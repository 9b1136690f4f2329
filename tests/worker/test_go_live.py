"""Going live (issues 13 and 15): model import, local labels, validation, the promotion gate,
recalibration, rollback, and workers following the live model.

The synthetic site: studies from two stations scored by a tiny random-weight ensemble whose
threshold sits at the median of its scores. Labels agreeing with the scores make a site where
the model works; labels anti-correlated with them, a site where it fails.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cxr_triage.cli import main
from db.models import AuditLog, ModelPromotion, Validation
from db.registry import label_count
from tests.support import dicomgen
from tests.worker.conftest import AddInstance, build_ensemble, load_cpu
from training.manifest import load_manifest, write_manifest
from worker.models.store import import_model
from worker.report.identity import model_identity
from worker.runtime import WorkerContext
from worker.score.batch import ImageRef
from worker.settings import InferenceSettings, WorkerSettings
from worker.validation.criteria import ValidationError
from worker.validation.data import score_refs
from worker.validation.labels import import_labels
from worker.validation.run import ValidateRequest, validate

STUDIES = 24
STATIONS = ("XR-A", "XR-B")
CRITERIA = {"min_sensitivity_lower": 0.6, "min_positives": 10, "min_negatives": 10,
            "min_auc_lower": 0.6}


@dataclasses.dataclass(frozen=True)
class Site:
    model: Path
    version: str
    studies: list[tuple[str, str, float]]  # study UID, station, the model's probability
    threshold: float


@pytest.fixture
def site(tmp_path: Path, db_url: str, sessions: sessionmaker[Session],
         add_instance: AddInstance, monkeypatch: pytest.MonkeyPatch) -> Site:
    model = build_ensemble(tmp_path / "model", seed=3, label="site test model")
    refs, meta = [], []
    for index in range(STUDIES):
        study_uid, station = generate_uid(), STATIONS[index % 2]
        ds = dicomgen.radiograph(study_uid=study_uid, seed=index)
        ds.StationName, ds.Manufacturer = station, "ACME"
        path = dicomgen.write(ds, tmp_path / "storage" / f"site{index:03d}.dcm")
        instance_id = add_instance(study_uid, path=path)
        refs.append(ImageRef(instance_id, str(path), ""))
        meta.append((study_uid, station))
    scored = score_refs(load_cpu(model), refs, 0.2)
    probs = [scored[r.instance_id].probability_mean for r in refs]
    ordered = sorted(probs)
    threshold = (ordered[STUDIES // 2 - 1] + ordered[STUDIES // 2]) / 2
    manifest = load_manifest(model)
    write_manifest(model, dataclasses.replace(manifest, threshold=threshold))
    acceptance = tmp_path / "acceptance.json"
    acceptance.write_text(json.dumps(CRITERIA), encoding="utf-8")
    for name, value in {"DB_URL": db_url, "MODEL_STORE": str(tmp_path / "store"),
                        "ACCEPTANCE_FILE": str(acceptance), "DEVICE": "cpu",
                        "TORCH_THREADS": "1", "VAR_DIR": str(tmp_path / "var")}.items():
        monkeypatch.setenv(f"TRIAGE_{name}", value)
    studies = [(uid, station, p) for (uid, station), p in zip(meta, probs, strict=True)]
    return Site(model, manifest.model_version, studies, threshold)


def _labels(path: Path, site: Site, positive: dict[str, bool]) -> Path:
    rows = ["study,label,source,date"] + [
        f"{uid},{'positive' if positive[uid] else 'negative'},radiologist review,2026-11-30"
        for uid, _, _ in site.studies]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _agreeing(site: Site) -> dict[str, bool]:
    return {uid: p >= site.threshold for uid, _, p in site.studies}


def test_a_site_where_the_model_fails_is_refused(
        site: Site, tmp_path: Path, sessions: sessionmaker[Session],
        capsys: pytest.CaptureFixture[str]) -> None:
    anti = {uid: not positive for uid, positive in _agreeing(site).items()}
    assert main(["labels", "import", str(_labels(tmp_path / "l.csv", site, anti))]) == 0
    assert main(["model", "import", str(site.model)]) == 0
    assert main(["validate", "--model", site.version, "--out", str(tmp_path / "v")]) == 5
    out = capsys.readouterr().out
    assert "worse than chance: check labels, or a source confound" in out
    assert "FAILED the acceptance criteria" in out
    report = (tmp_path / "v" / "report.md").read_text(encoding="utf-8")
    assert "FAILED" in report and "## By StationName" in report
    assert (tmp_path / "v" / "reliability.png").is_file()

    assert main(["model", "promote", site.version]) == 2
    assert "failed the acceptance criteria" in capsys.readouterr().err
    assert main(["model", "promote", site.version, "--force"]) == 2
    assert "--force needs --reason" in capsys.readouterr().err
    assert main(["model", "promote", site.version, "--force", "--reason", "vendor test",
                 "--by", "dr-admin"]) == 0
    with sessions() as session:
        (validation,) = session.scalars(select(Validation)).all()
        (promotion,) = session.scalars(select(ModelPromotion)).all()
        audit = session.scalars(select(AuditLog)).all()
    assert not validation.passed and validation.metrics["overall"]["auc"]["value"] < 0.5
    assert promotion.forced and promotion.promoted_by == "dr-admin"
    assert promotion.reason == "vendor test" and promotion.validation_id is None
    assert [(a.username, a.action) for a in audit] == [("dr-admin", "model_promote")]
    assert "FORCED" in (audit[0].detail or "")


def test_a_site_where_the_model_works_is_promoted_and_audited(
        site: Site, tmp_path: Path, sessions: sessionmaker[Session],
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["labels", "import", str(_labels(tmp_path / "l.csv", site,
                                                 _agreeing(site)))]) == 0
    assert main(["model", "import", str(site.model)]) == 0
    assert main(["validate", "--model", site.version, "--out", str(tmp_path / "v")]) == 0
    assert "validate: PASSED" in capsys.readouterr().out
    assert main(["model", "promote", site.version, "--by", "dr-admin"]) == 0
    assert main(["model", "list"]) == 0
    listing = capsys.readouterr().out
    assert f"{site.version}  LIVE  site test model" in listing and "PASSED" in listing
    with sessions() as session:
        (promotion,) = session.scalars(select(ModelPromotion)).all()
        (audit,) = session.scalars(select(AuditLog)).all()
        validation = session.scalars(select(Validation)).one()
    assert not promotion.forced and promotion.validation_id == validation.id
    assert (audit.username, audit.action) == ("dr-admin", "model_promote")

    assert main(["model", "rollback"]) == 2  # nothing was live before it
    other = build_ensemble(tmp_path / "other", seed=9, label="other")
    assert main(["model", "import", str(other)]) == 0
    other_version = load_manifest(other).model_version
    assert main(["model", "promote", other_version, "--force", "--reason", "trial"]) == 0
    assert main(["model", "rollback", "--reason", "trial over"]) == 0
    capsys.readouterr()
    assert main(["model", "list"]) == 0
    assert f"{site.version}  LIVE" in capsys.readouterr().out


def test_breakdown_by_station_shows_the_weak_one(
        site: Site, tmp_path: Path, sessions: sessionmaker[Session]) -> None:
    agree = _agreeing(site)
    labels = {uid: agree[uid] if station == "XR-A" else not agree[uid]
              for uid, station, _ in site.studies}
    import_labels(sessions, _labels(tmp_path / "l.csv", site, labels), "test")
    import_model(sessions, site.model, tmp_path / "store", "test")
    result = validate(sessions, ValidateRequest(site.version, "test", out=tmp_path / "v",
                                                bootstrap=200), WorkerSettings.from_env())
    stations = result.breakdown["StationName"]
    assert set(stations) == set(STATIONS)
    assert stations["XR-A"].auc.value == 1.0 and stations["XR-B"].auc.value == 0.0
    assert stations["XR-A"].sensitivity.value == 1.0
    assert stations["XR-B"].sensitivity.value == 0.0
    assert result.breakdown["Manufacturer"]["ACME"].n == STUDIES


def test_recalibration_makes_a_new_version_that_needs_validation(
        site: Site, tmp_path: Path, sessions: sessionmaker[Session]) -> None:
    import_labels(sessions, _labels(tmp_path / "l.csv", site, _agreeing(site)), "test")
    import_model(sessions, site.model, tmp_path / "store", "test")
    result = validate(sessions, ValidateRequest(site.version, "test", out=tmp_path / "v",
                                                recalibrate=True, accept=True,
                                                target_sensitivity=0.5, bootstrap=200),
                      WorkerSettings.from_env())
    assert result.proposal is not None and result.new_version not in (None, site.version)
    assert result.proposal.threshold > site.threshold  # half the positives suffice
    assert result.proposal.sensitivity.value == pytest.approx(0.5)
    new_dir = tmp_path / "store" / str(result.new_version)
    old, new = load_manifest(site.model), load_manifest(new_dir)
    assert [f.sha256 for f in new.folds] == [f.sha256 for f in old.folds]
    assert new.threshold == pytest.approx(result.proposal.threshold)
    assert model_identity(new).device_uid != model_identity(old).device_uid
    assert main(["model", "promote", str(result.new_version)]) == 2  # not validated itself


def test_a_label_file_with_a_bad_row_imports_nothing(
        site: Site, tmp_path: Path, sessions: sessionmaker[Session]) -> None:
    uids = [uid for uid, _, _ in site.studies]
    path = tmp_path / "labels.csv"
    path.write_text("study,label,source,date\n"
                    f"{uids[0]},positive,review,2026-11-30\n"
                    f"{uids[1]},negative,review,30/11/2026\n"
                    f"{uids[2]},maybe,review,2026-11-30\n"
                    "1.2.3.4.unknown,negative,review,2026-11-30\n", encoding="utf-8")
    with pytest.raises(ValidationError) as caught:
        import_labels(sessions, path, "test")
    message = str(caught.value)
    assert "nothing imported" in message
    assert "line 3: date '30/11/2026'" in message and "line 4: label 'maybe'" in message
    assert "line 5: no received study" in message and "line 2" not in message
    with sessions() as session:
        assert label_count(session) == 0


def test_workers_follow_the_promoted_model_without_a_restart(
        site: Site, tmp_path: Path, db_url: str, sessions: sessionmaker[Session]) -> None:
    fallback = build_ensemble(tmp_path / "fallback", seed=11, label="fallback")
    settings = WorkerSettings(model_dir=fallback, model_check_s=0.0,
                              inference=InferenceSettings(device="cpu", torch_threads=1),
                              db=dataclasses.replace(WorkerSettings().db, url=db_url))
    context = WorkerContext(settings)
    fallback_version = load_manifest(fallback).model_version
    assert context.model()[1] == fallback_version  # nothing promoted: TRIAGE_MODEL_DIR
    assert context.ensemble().model_version == fallback_version
    import_model(sessions, site.model, tmp_path / "store", "test")
    assert main(["model", "promote", site.version, "--force", "--reason", "switch test"]) == 0
    assert context.ensemble().model_version == site.version  # the next batch: the new model
    identity, version = context.model()
    assert version == site.version and identity.algorithm_name == "site test model"
