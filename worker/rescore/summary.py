"""What ``cxr-triage rescore`` prints at the end, and a run row as drift statistics."""

from __future__ import annotations

from typing import TYPE_CHECKING

from db.models import RescoreRun
from worker.rescore.drift import RunStats

if TYPE_CHECKING:  # the run module brings in the ensemble (torch): not for `drift`
    from worker.rescore.run import RescoreResult


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def summary_lines(result: RescoreResult, *, dry_run: bool = False) -> list[str]:
    """The summary: counts, flagged, changes against the previous version, studies changed."""
    c, r = result.comparison, result.reports
    head = "dry run (nothing changed)" if dry_run else f"run {result.run_id}: {result.status}"
    lines = [
        f"rescore, model {result.model_version}: {head}",
        f"  instances selected       {result.selected}",
        f"  scored by this run       {result.scored_now}"
        + (f" (to score: {result.to_score})" if dry_run else ""),
        f"  already scored           {result.already_scored}",
        f"  failed in this run       {len(result.failed_now)}",
        f"  failed earlier           {result.failed_before} (not retried; --retry-failed)",
        f"  left to live pipeline    {result.in_flight}",
        f"  flagged (suspected)      {c.flagged} of {c.scored}",
        f"  indeterminate            {c.indeterminate} "
        f"(rate {_num(c.indeterminate_rate, '.3f')})",
        f"  mean probability         {_num(c.mean_probability, '.4f')}",
        f"  vs previous version      {c.compared} instances compared, "
        f"{c.decisions_changed} decisions changed, mean shift {_num(c.mean_shift, '+.4f')}",
        f"  studies changed          {len(c.changed)} "
        f"(new, no earlier result: {len(c.new_studies)})",
    ]
    if dry_run:
        lines.append(f"  reports a real run writes {len(result.would_report)} "
                     f"(--send {result.send.value})")
    if not dry_run:
        states = ", ".join(f"{k} {v}" for k, v in sorted(r.deliveries.items())) or "none"
        lines += [
            f"  reports written          {len(r.written)} (unchanged {r.unchanged}, "
            f"not quiet yet {len(r.waiting)}, failed {len(r.failed)})",
            f"  deliveries               {states}",
        ]
    if c.changed:
        lines.append("studies that changed (study UID: previous -> new, mean probability):")
        for change in c.changed:
            uid = result.study_uids.get(change.study_id, str(change.study_id))
            lines.append(f"  {uid}: {change.previous} -> {change.current} "
                         f"({change.previous_mean:.4f} -> {change.current_mean:.4f}, "
                         f"previous model {change.previous_version})")
    for instance_id, reason in sorted(result.failed_now.items()):
        lines.append(f"  failed: instance {instance_id}: {reason}")
    for study_id, reason in sorted(r.failed.items()):
        lines.append(f"  no report: study {result.study_uids.get(study_id, study_id)}: {reason}")
    if result.message:
        lines.append(f"  error: {result.message}")
    return lines


def print_summary(result: RescoreResult, *, dry_run: bool = False) -> None:
    """Print :func:`summary_lines` (CLI output)."""
    print("\n".join(summary_lines(result, dry_run=dry_run)))


def run_stats(run: RescoreRun) -> RunStats:
    """The drift view of a ``rescore_run`` row."""
    finished = run.finished_at or run.started_at
    return RunStats(run.id, run.model_version, finished.strftime("%Y-%m-%d %H:%M"),
                    tuple(float(p) for p in run.probabilities or ()), run.indeterminate_rate)
