"""The validation report: local figures beside the model's own cross-validation figures,
warnings, the breakdown by scanner and view, the verdict, and plots (Markdown + PNG)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training import report as training_report
from training.manifest import EnsembleManifest
from training.metrics import roc
from worker.validation.stats import NAN, Estimate, Figures, Sample

BELOW_CHANCE = "worse than chance: check labels, or a source confound"


def cv_figures(manifest: EnsembleManifest) -> dict[str, Estimate]:
    """The model's cross-validation figures as the manifest records them.

    AUC: the mean of the fold AUCs, with their range as its interval. At the threshold: the
    out-of-fold sensitivity it was chosen for and the specificity it gave (points only).
    """
    aucs = [f.metrics.get("auc") for f in manifest.folds]
    values = [float(a) for a in aucs if isinstance(a, (int, float)) and not math.isnan(a)]
    sens = manifest.threshold_target_sensitivity
    spec = manifest.threshold_oof_specificity
    return {
        "auc": Estimate(float(np.mean(values)), min(values), max(values)) if values else NAN,
        "sensitivity": Estimate(sens, sens, sens),
        "specificity": Estimate(spec, spec, spec),
    }


def warnings_for(local: Figures, cv: dict[str, Estimate]) -> list[str]:
    """Plain warnings: below chance, or local figures beyond the cross-validation ones."""
    found = []
    if not math.isnan(local.auc.value) and local.auc.value < 0.5:
        found.append(f"AUC {local.auc.value:.3f} is below 0.5: {BELOW_CHANCE}")
    for name in ("auc", "sensitivity", "specificity"):
        mine: Estimate = getattr(local, name)
        if not mine.overlaps(cv[name]):
            found.append(f"local {name} {mine.text()} differs from the cross-validation "
                         f"figure {cv[name].text()} beyond their intervals: the development "
                         "data does not represent this site")
    return found


@dataclass(frozen=True)
class ValidationReport:
    """Everything the Markdown report shows."""

    version: str
    label: str
    data_source: str
    threshold: float
    figures: Figures
    cv: dict[str, Estimate]
    breakdown: dict[str, dict[str, Figures]]
    warnings: list[str]
    failed: list[str]  # the criteria not met (empty: passed)
    criteria: dict[str, float]
    recalibration: list[str]


def _table(rows: Sequence[tuple[str, Figures]]) -> list[str]:
    lines = ["| Group | n | pos/neg | Sensitivity (95 % CI) | Specificity (95 % CI) "
             "| AUC (95 % CI) | Brier | Not assessable |", "|" + "---|" * 8]
    for name, f in rows:
        brier = "n/a" if math.isnan(f.brier) else f"{f.brier:.3f}"
        lines.append(f"| {name} | {f.n} | {f.positives}/{f.negatives} | {f.sensitivity.text()} "
                     f"| {f.specificity.text()} | {f.auc.text()} | {brier} "
                     f"| {f.not_assessable.text()} |")
    return lines


def markdown(r: ValidationReport) -> str:
    """The report's text."""
    verdict = "PASSED" if not r.failed else "FAILED"
    c = r.figures
    lines = [f"# Local validation of model {r.version}: {verdict}", "",
             f"- model: {r.label or '(no label)'}, threshold {r.threshold:.4f}",
             f"- data: {r.data_source}", "", "## Verdict against the site's criteria", ""]
    lines += [f"- FAILED: {why}" for why in r.failed] or ["- every criterion is met"]
    lines += ["", "Criteria: " + ", ".join(f"{k} {v}" for k, v in r.criteria.items()), ""]
    if r.warnings:
        lines += ["## Warnings", "", *(f"- **WARNING**: {w}" for w in r.warnings), ""]
    lines += ["## Local figures", "", *_table([("all", r.figures)]),
              "", f"Counts at the threshold: TP {c.tp}, FN {c.fn}, FP {c.fp}, "
              f"TN {c.tn}. Proportions: Wilson 95 % intervals; AUC: stratified bootstrap.",
              "", "## Beside the model's cross-validation", "",
              "| Figure | Local (95 % CI) | Cross-validation |", "|---|---|---|"]
    for name in ("sensitivity", "specificity", "auc"):
        lines.append(f"| {name} | {getattr(r.figures, name).text()} | {r.cv[name].text()} |")
    lines += ["", "Cross-validation AUC: mean of the folds (range as interval); sensitivity: "
              "the out-of-fold target the threshold was set for.", ""]
    for attribute, groups in r.breakdown.items():
        lines += [f"## By {attribute}", "", *_table(list(groups.items())), ""]
    if r.recalibration:
        lines += ["## Threshold recalibration", "", *(f"- {t}" for t in r.recalibration), ""]
    lines += ["![ROC](roc.png)", "", "![reliability](reliability.png)", ""]
    return "\n".join(lines)


def write_report(out: Path, r: ValidationReport, samples: Sequence[Sample]) -> Path:
    """Write ``report.md``, ``roc.png`` and ``reliability.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    assessed = [s for s in samples if s.decision != "not_assessable"]
    y = np.array([int(s.positive) for s in assessed])
    p = np.array([s.probability for s in assessed])
    if len(set(y.tolist())) == 2:
        f = r.figures
        training_report.plot_roc(
            out / "roc.png", [("local", *roc(y, p), f.auc.value)],
            (1 - f.specificity.value, f.sensitivity.value, f"threshold {r.threshold:.3f}"),
            title=f"ROC of {r.version} on local data")
    if y.size:
        training_report.plot_reliability(out / "reliability.png", y, p, r.figures.brier,
                                         label=r.version, title="Reliability on local data")
    path = out / "report.md"
    path.write_text(markdown(r), encoding="utf-8")
    return path
