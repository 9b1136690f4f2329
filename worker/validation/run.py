"""``cxr-triage validate``: score the site's labelled data with a model version, compare with
its cross-validation, judge it against the site's criteria, write and record the report."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from common.config import default_var_dir
from db.models import utcnow
from db.registry import record_validation
from training.manifest import load_manifest
from worker.models.store import version_dir
from worker.score.ensemble import Ensemble
from worker.settings import WorkerSettings
from worker.validation.criteria import AcceptanceCriteria, ValidationError, verdict
from worker.validation.data import database_samples, folder_samples
from worker.validation.recalibrate import Proposal, accept, propose
from worker.validation.report import ValidationReport, cv_figures, warnings_for, write_report
from worker.validation.stats import BOOTSTRAP_SAMPLES, Figures, breakdown, figures

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidateRequest:
    """One ``cxr-triage validate`` invocation."""

    version: str
    by: str
    data: Path | None = None  # a folder or CSV; None: the labelled studies in the database
    out: Path | None = None
    recalibrate: bool = False
    accept: bool = False
    target_sensitivity: float | None = None
    bootstrap: int = BOOTSTRAP_SAMPLES


@dataclass
class ValidateResult:
    """What the validation found and did."""

    version: str
    threshold: float
    validation_id: int
    passed: bool
    figures: Figures
    failed: list[str]
    warnings: list[str]
    report_path: Path
    breakdown: dict[str, dict[str, Figures]] = field(default_factory=dict)
    proposal: Proposal | None = None
    new_version: str | None = None


def _out_dir(request: ValidateRequest) -> Path:
    if request.out is not None:
        return request.out
    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    return default_var_dir() / "validations" / f"{request.version}-{stamp}"


def validate(sessions: sessionmaker[Session], request: ValidateRequest,
             worker: WorkerSettings) -> ValidateResult:
    """Run one validation (and, when asked, the recalibration) and record it."""
    model_dir = version_dir(sessions, request.version)
    manifest = load_manifest(model_dir, verify_hashes=False)
    loaded: list[Ensemble] = []

    def model() -> Ensemble:
        if not loaded:
            loaded.append(Ensemble.load(model_dir, worker.inference))
        return loaded[0]

    if request.data is not None:
        samples = folder_samples(request.data, model(), worker.indeterminate_std)
        source = f"folder/CSV {request.data}"
    else:
        samples = database_samples(sessions, manifest.model_version, model,
                                   worker.indeterminate_std)
        source = "labelled studies in the database"
    if not samples:
        raise ValidationError("no labelled image could be scored; see the log")
    criteria = AcceptanceCriteria.load(worker.acceptance_file)
    overall = figures(samples, manifest.threshold, bootstrap=request.bootstrap)
    cv = cv_figures(manifest)
    failed = verdict(overall, criteria)
    proposal = None
    if request.recalibrate or request.accept:
        proposal = propose(samples, request.target_sensitivity or criteria.target_sensitivity)
    groups = breakdown(samples, manifest.threshold, bootstrap=max(100, request.bootstrap // 4))
    report = ValidationReport(
        version=manifest.model_version, label=manifest.label, data_source=source,
        threshold=manifest.threshold, figures=overall, cv=cv, breakdown=groups,
        warnings=warnings_for(overall, cv), failed=failed, criteria=criteria.to_dict(),
        recalibration=proposal.lines(manifest.threshold) if proposal else [])
    path = write_report(_out_dir(request), report, samples)
    metrics = {"overall": overall.to_dict(), "warnings": report.warnings, "failed": failed,
               "breakdown": {a: {k: v.to_dict() for k, v in g.items()}
                             for a, g in groups.items()}}
    if proposal is not None:
        metrics["recalibration"] = {"threshold": proposal.threshold,
                                    "target_sensitivity": proposal.target_sensitivity}
    with sessions.begin() as session:
        validation_id = record_validation(
            session, version=manifest.model_version, data_source=source, passed=not failed,
            criteria=criteria.to_dict(), metrics=metrics, report_path=str(path),
            created_by=request.by)
    result = ValidateResult(manifest.model_version, manifest.threshold, validation_id,
                            not failed, overall, failed, report.warnings, path, groups, proposal)
    if request.accept and proposal is not None:
        result.new_version = accept(sessions, model_dir, manifest, proposal,
                                    validation_id=validation_id, store=worker.model_store,
                                    by=request.by).version
    return result
