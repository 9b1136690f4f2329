"""``cxr-triage labels import`` and ``cxr-triage validate`` (docs/go-live.md).

``validate`` exits 0 when the version passes the site's acceptance criteria, 5 when it does
not (the report says why), 2 on a usage or configuration error.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from worker.settings import WorkerSettings

EXIT_FAILED_CRITERIA = 5


def _labels_import(args: argparse.Namespace) -> int:
    from worker.engine import current_sessions
    from worker.models.store import current_user
    from worker.validation.labels import import_labels

    settings = WorkerSettings.from_env()
    with current_sessions(settings.db.url) as sessions:
        count = import_labels(sessions, Path(args.csv), current_user(args.by))
    print(f"labels: {count} studies labelled from {args.csv}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from worker.engine import current_sessions
    from worker.models.store import current_user
    from worker.validation.run import ValidateRequest, validate

    settings = WorkerSettings.from_env()
    request = ValidateRequest(
        version=args.model, by=current_user(args.by),
        data=Path(args.data) if args.data else None, out=Path(args.out) if args.out else None,
        recalibrate=args.recalibrate, accept=args.accept,
        target_sensitivity=args.target_sensitivity)
    with current_sessions(settings.db.url) as sessions:
        result = validate(sessions, request, settings)
    f = result.figures
    print(f"validate: model {result.version} on {f.n} samples ({f.positives} positive, "
          f"{f.negatives} negative), validation {result.validation_id}")
    print(f"  sensitivity {f.sensitivity.text()}, specificity {f.specificity.text()}, "
          f"AUC {f.auc.text()}, Brier {f.brier:.4f}, not assessable "
          f"{f.not_assessable.text()}")
    for warning in result.warnings:
        print(f"WARNING: {warning}")
    for why in result.failed:
        print(f"  criterion not met: {why}")
    if result.proposal is not None:
        for line in result.proposal.lines(result.threshold):
            print(f"  recalibration: {line}")
    if result.new_version:
        print(f"  new model version {result.new_version} (same weights, new threshold) is in "
              f"the store; validate it: `cxr-triage validate --model {result.new_version}`")
    verdict = "PASSED" if result.passed else "FAILED the acceptance criteria"
    print(f"validate: {verdict}; report {result.report_path}")
    return 0 if result.passed else EXIT_FAILED_CRITERIA


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``labels`` and ``validate``."""
    labels = subparsers.add_parser("labels", help="ground truth of received studies")
    sub = labels.add_subparsers(dest="labels_command", metavar="ACTION", required=True)
    imp = sub.add_parser("import", help="import study,label,source,date rows (all or none)")
    imp.add_argument("csv", metavar="CSV")
    imp.add_argument("--by", help="who imports (default: the OS user)")
    imp.set_defaults(func=_labels_import)

    val = subparsers.add_parser(
        "validate", help="a model version on the site's labelled data: intervals, breakdown, "
        "verdict against TRIAGE_ACCEPTANCE_FILE")
    val.add_argument("--model", required=True, metavar="VERSION",
                     help="a version in the model store (`cxr-triage model list`)")
    val.add_argument("--data", metavar="DIR|CSV",
                     help="a labelled folder or CSV as `evaluate` reads (default: the labelled "
                     "studies in the database)")
    val.add_argument("--out", metavar="DIR",
                     help="report folder (default var/validations/VERSION-TIME)")
    val.add_argument("--recalibrate", action="store_true",
                     help="propose the threshold reaching the target sensitivity locally")
    val.add_argument("--target-sensitivity", type=float,
                     help="for --recalibrate (default: target_sensitivity of the criteria)")
    val.add_argument("--accept", action="store_true",
                     help="with --recalibrate: store the new threshold as a new model version")
    val.add_argument("--by", help="who validates (default: the OS user)")
    val.set_defaults(func=_validate)
