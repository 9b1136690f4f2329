"""The samples a validation scores: labelled local studies, or a labelled folder or CSV.

Local studies reuse the scores the model already recorded for their current content (shadow
mode's); the other images are scored here, in memory, with the same ensemble and decision
rule as the worker. A study's result is that of its most suspicious image, as its report
says. Header attributes of the breakdown come from the stored DICOM files (no pixel data
read).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy.orm import Session, sessionmaker

from common.errors import TriageError
from db.registry import LabelledInstance, labelled_instances
from db.runs import study_scores
from training.data import discover
from worker.score.batch import ImageRef, decode_batch, predict_batch
from worker.score.decision import Decision, ImageResult, decide, study_result
from worker.score.ensemble import Ensemble
from worker.validation.criteria import ValidationError
from worker.validation.stats import BREAKDOWN_ATTRIBUTES, Sample

logger = logging.getLogger(__name__)

BATCH = 8


def header_attributes(path: str | Path) -> dict[str, str]:
    """Manufacturer, Station Name, View Position and Modality of a DICOM file (else empty)."""
    try:
        dataset = dcmread(path, stop_before_pixels=True, specific_tags=list(
            BREAKDOWN_ATTRIBUTES))
    except (InvalidDicomError, OSError, ValueError, TypeError):
        return {}
    return {name: str(dataset.get(name, "") or "").strip() for name in BREAKDOWN_ATTRIBUTES}


def score_refs(model: Ensemble, refs: Sequence[ImageRef], indeterminate_std: float
               ) -> dict[int, ImageResult]:
    """Score images in memory (nothing recorded); images that can't be decoded are left out."""
    results: dict[int, ImageResult] = {}
    for start in range(0, len(refs), BATCH):
        predicted = predict_batch(model, decode_batch(refs[start:start + BATCH],
                                                      model.preprocess))
        for ref, reason in predicted.batch.failures:
            logger.warning("validation: image %d left out: %s", ref.instance_id, reason)
        p = predicted.prediction
        if p is None:
            continue
        for i, ref in enumerate(predicted.batch.refs):
            decision = decide(p.mean[i], p.std[i], threshold=model.threshold,
                              indeterminate_std=indeterminate_std,
                              unlike_training_data=p.unlike_training_data(i))
            results[ref.instance_id] = ImageResult(ref.instance_id, "", decision, p.mean[i],
                                                   p.std[i], tuple(p.folds[i]))
    return results


def _stored(session: Session, rows: Sequence[LabelledInstance], version: str
            ) -> dict[int, ImageResult]:
    wanted = {r.instance_id for r in rows}
    return {s.instance_id: ImageResult(s.instance_id, s.sop_instance_uid, Decision(s.decision),
                                       s.probability_mean, s.probability_std,
                                       s.fold_probabilities)
            for s in study_scores(session, sorted({r.study_id for r in rows}))
            if s.model_version == version and s.instance_id in wanted}


def database_samples(sessions: sessionmaker[Session], version: str,
                     model: Callable[[], Ensemble], indeterminate_std: float) -> list[Sample]:
    """One sample per labelled study with at least one scorable image."""
    with sessions() as session:
        rows = labelled_instances(session)
        results = _stored(session, rows, version)
    if not rows:
        raise ValidationError("no labelled study in the database; import labels with "
                              "`cxr-triage labels import CSV` (docs/go-live.md)")
    todo = [ImageRef(r.instance_id, r.file_path, r.content_sha256) for r in rows
            if r.instance_id not in results]
    if todo:
        logger.info("validation: scoring %d images without a stored score", len(todo))
        results.update(score_refs(model(), todo, indeterminate_std))
    by_study: dict[int, list[LabelledInstance]] = {}
    for row in rows:
        by_study.setdefault(row.study_id, []).append(row)
    samples = []
    for members in by_study.values():
        images = [results[r.instance_id] for r in members if r.instance_id in results]
        if not images:
            continue
        best = study_result(images)
        path = next(r.file_path for r in members if r.instance_id == best.instance_id)
        samples.append(Sample(members[0].study_instance_uid, members[0].positive,
                              best.probability_mean, best.decision.value,
                              header_attributes(path)))
    return samples


def folder_samples(data: Path, model: Ensemble, indeterminate_std: float) -> list[Sample]:
    """One sample per labelled image of a folder or CSV (the layouts ``evaluate`` reads)."""
    manifest = model.manifest
    try:
        found = discover(data, manifest.class_names)
    except TriageError as exc:
        raise ValidationError(str(exc)) from exc
    refs = [ImageRef(i, str(s.path), "") for i, s in enumerate(found)]
    results = score_refs(model, refs, indeterminate_std)
    return [Sample(str(s.path), s.label == manifest.positive_class, results[i].probability_mean,
                   results[i].decision.value, header_attributes(s.path))
            for i, s in enumerate(found) if i in results]
