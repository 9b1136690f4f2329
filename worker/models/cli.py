"""``cxr-triage model import|list|promote|rollback`` (docs/go-live.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from worker.engine import current_sessions
from worker.score.precision import (
    DEFAULT_KEEP,
    DEFAULT_RANGES,
    RANGES,
    STAGES,
    PrecisionError,
    check_stages,
    describe_plan,
    plan_from_manifest,
    planned_device,
)
from worker.settings import WorkerSettings

# Manifest keys whose name says they describe the safety gate (OOD statistics and the like);
# shown by ``model list`` whatever their content.
GATE_KEY_WORDS = ("gate", "ood", "safety")




def gate_statistics(manifest: dict[str, Any]) -> str:
    """The manifest's safety-gate entries, compactly (``-`` when there are none)."""
    parts = []
    for key, value in manifest.items():
        if any(word in key.lower() for word in GATE_KEY_WORDS):
            if isinstance(value, dict):
                inner = ", ".join(f"{k}={_short(v)}" for k, v in value.items()
                                  if not isinstance(v, (dict, list)))
                parts.append(f"{key}({inner})")
            else:
                parts.append(f"{key}={_short(value)}")
    return "; ".join(parts) or "-"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _import(args: argparse.Namespace) -> int:
    from worker.models.store import current_user, import_model

    settings = WorkerSettings.from_env()
    with current_sessions(settings.db.url) as sessions:
        done = import_model(sessions, Path(args.source), settings.model_store,
                            current_user(args.by))
    state = "already in the store" if done.already else "imported"
    print(f"model {done.version}: {state} ({done.directory}); make it live with "
          f"`cxr-triage model promote {done.version}` after `cxr-triage validate`")
    return 0


def inference_line(manifest: dict[str, Any], settings: WorkerSettings) -> str:
    """What this model would run in on this machine with the current settings, and why."""
    from common.hardware import detect

    caps = detect(light=True)
    inference = settings.inference
    try:
        choice = plan_from_manifest(manifest, inference.precision, inference.backend,
                                    device=planned_device(inference.device, caps), caps=caps,
                                    cache_dir=inference.openvino_cache_dir,
                                    threads=inference.torch_threads)
    except PrecisionError as exc:
        return f"    inference here: REFUSED: {exc}"
    return f"    inference here: {choice.describe()}"


def list_lines(sessions: sessionmaker[Session],
               settings: WorkerSettings | None = None) -> list[str]:
    """One block per imported version, the live one marked, with the precision it would run
    in on this machine (``settings``: the inference settings; from the environment)."""
    from db.registry import latest_validation, live_model, model_versions

    settings = settings or WorkerSettings.from_env()
    lines = []
    with sessions() as session:
        live = live_model(session)
        for row in model_versions(session):
            validation = latest_validation(session, row.version)
            status = ("not validated" if validation is None else
                      f"{'PASSED' if validation.passed else 'FAILED'} "
                      f"(validation {validation.id}, {validation.created_at:%Y-%m-%d})")
            mark = "LIVE" if live is not None and live.version == row.version else "-"
            lines += [
                f"{row.version}  {mark}  {row.label or '(no label)'}",
                f"    threshold {row.threshold:.4f}  training data "
                f"{row.dataset_fingerprint[:16]}  imported {row.imported_at:%Y-%m-%d %H:%M} "
                f"by {row.imported_by}"
                + (f"  recalibrated from {row.derived_from}" if row.derived_from else ""),
                f"    safety gate: {gate_statistics(row.manifest)}",
                f"    local validation: {status}",
                inference_line(row.manifest, settings),
            ]
    return lines


def _list(args: argparse.Namespace) -> int:
    settings = WorkerSettings.from_env()
    with current_sessions(settings.db.url) as sessions:
        lines = list_lines(sessions, settings)
    from common.hardware import detect

    print(f"this machine: {detect(light=True).describe()}")
    if not lines:
        print(f"no model in the store; workers use TRIAGE_MODEL_DIR ({settings.model_dir}). "
              "Add one with `cxr-triage model import DIR|TARBALL`")
        _print_model_dir_plan(settings)
        return 0
    print("\n".join(lines))
    return 0


def _print_model_dir_plan(settings: WorkerSettings) -> None:
    from common.hardware import detect

    inference = settings.inference
    plan = describe_plan(settings.model_dir, inference.precision, inference.backend,
                         device_setting=inference.device, caps=detect(light=True),
                         cache_dir=inference.openvino_cache_dir,
                         threads=inference.torch_threads)
    print(f"TRIAGE_MODEL_DIR inference here: {plan}")


def _stages(text: str) -> tuple[str, ...]:
    """``--keep``: a comma-separated list of ResNet stages, or ``none``."""
    try:
        return check_stages([s.strip() for s in text.split(",")
                             if s.strip() and s.strip() != "none"])
    except PrecisionError as exc:
        raise argparse.ArgumentTypeError(f"{exc} or none") from exc


def _quantize(args: argparse.Namespace) -> int:
    """Build the int8 graph of ``--model`` (a folder or stored version; TRIAGE_MODEL_DIR)."""
    from worker.score.int8 import quantize_ensemble

    settings = WorkerSettings.from_env()
    model_dir = settings.model_dir if args.model is None else Path(args.model)
    if args.model is not None and not (model_dir / "ensemble.json").is_file():
        from worker.models.store import resolve_model

        with current_sessions(settings.db.url) as sessions:
            model_dir = resolve_model(sessions, args.model)
    graph = quantize_ensemble(model_dir, Path(args.data), settings.inference.openvino_cache_dir,
                              images=args.images, force=args.force,
                              keep=args.keep, ranges=args.ranges)
    print(f"{graph.reason}: {graph.path}")
    if graph.error is not None:
        error = graph.error
        gate = ("" if error.gate_deviation is None else
                f", gate score by up to {error.gate_deviation:.1%} of the gate threshold")
        print(f"int8 against fp32 on {error.images} check images: probability off by up to "
              f"{error.max_dp:.4f}{gate}; re-checked in fp32 within {error.exact_margin:.4f} "
              f"and {error.gate_margin:.1%} of the gate threshold ({error.rescore_share:.1%} of "
              f"the check images)")
        refusal = graph.auto_refusal(gated=error.gate_deviation is not None)
        print("auto considers int8 on CPUs with VNNI/AMX: a worker's first start times it "
              "against bf16 and fp32, re-checks included, and keeps the fastest"
              if refusal is None else f"auto avoids it: {refusal}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    from worker.models.promote import promote
    from worker.models.store import current_user

    settings = WorkerSettings.from_env()
    with current_sessions(settings.db.url) as sessions:
        done = promote(sessions, args.version, by=current_user(args.by), reason=args.reason,
                       force=args.force)
    print(f"model {done.version} is live (was {done.previous or 'TRIAGE_MODEL_DIR'}; "
          f"{done.note}); workers switch within TRIAGE_MODEL_CHECK_S seconds")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from worker.models.promote import rollback
    from worker.models.store import current_user

    settings = WorkerSettings.from_env()
    with current_sessions(settings.db.url) as sessions:
        done = rollback(sessions, by=current_user(args.by), reason=args.reason)
    print(f"model {done.version} is live again (rolled back from {done.previous})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``model`` and its subcommands."""
    model = subparsers.add_parser("model", help="the model store: import, list, promote, "
                                  "roll back the live model")
    sub = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    imp = sub.add_parser("import", help="check an ensemble's hashes and copy it into the "
                         "store (TRIAGE_MODEL_STORE)")
    imp.add_argument("source", metavar="DIR|TARBALL")
    imp.add_argument("--by", help="who imports (default: the OS user)")
    imp.set_defaults(func=_import)
    sub.add_parser("list", help="imported versions, the live one, their validation"
                   ).set_defaults(func=_list)
    qua = sub.add_parser("quantize", help="build the int8 OpenVINO graph of a model "
                         "(NNCF, calibrated on training images) for TRIAGE_INFERENCE_PRECISION "
                         "auto or int8")
    qua.add_argument("--model", metavar="DIR|VERSION",
                     help="ensemble folder or stored version (default TRIAGE_MODEL_DIR)")
    qua.add_argument("--data", required=True,
                     help="training images, any layout `cxr-triage train` reads")
    qua.add_argument("--images", type=int, default=300,
                     help="calibration images, classes balanced (default 300)")
    qua.add_argument("--force", action="store_true", help="rebuild even when current")
    qua.add_argument("--keep", type=_stages, default=DEFAULT_KEEP, metavar="STAGES",
                     help="ResNet stages kept in floating point, comma-separated, of "
                          f"{', '.join(STAGES)} (default {','.join(DEFAULT_KEEP)}, measured: "
                          "docs/worker.md); 'none' quantizes every convolution")
    qua.add_argument("--ranges", choices=tuple(RANGES), default=DEFAULT_RANGES,
                     help="activation ranges: over all calibration images (minmax, default) or "
                          "NNCF's mean of per-image ranges (mean)")
    qua.set_defaults(func=_quantize)
    pro = sub.add_parser("promote", help="make a validated version live")
    pro.add_argument("version", metavar="VERSION")
    pro.add_argument("--force", action="store_true",
                     help="promote without a passing local validation (needs --reason)")
    pro.add_argument("--reason", help="why (recorded in the audit trail)")
    pro.add_argument("--by", help="who promotes (default: the OS user)")
    pro.set_defaults(func=_promote)
    back = sub.add_parser("rollback", help="go back to the model live before the last promotion")
    back.add_argument("--reason", help="why (recorded in the audit trail)")
    back.add_argument("--by", help="who rolls back (default: the OS user)")
    back.set_defaults(func=_rollback)
