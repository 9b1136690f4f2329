"""``cxr-triage train`` and ``cxr-triage evaluate``; torch is imported only when they run."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="10-fold cross-validated ResNet-50 training into an ensemble directory",
        description="Train one ResNet-50 per fold; re-running with the same --out resumes. "
        "Unset flags come from TRIAGE_TRAIN_* variables, then the defaults.")
    p.add_argument("--data", type=Path, help="class folders, a path,label CSV or metadata.csv")
    p.add_argument("--out", type=Path, help="ensemble directory (default var/runs/latest)")
    p.add_argument("--folds", type=int, help="number of CV folds (default 10)")
    p.add_argument("--epochs", type=int, help="epochs per fold (default 30, as in the paper)")
    p.add_argument("--input-size", type=int, help="model input in px (default 224)")
    p.add_argument("--batch-size", type=int, help="default 16")
    p.add_argument("--lr", type=float, help="head learning rate (default 1e-3)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 1e-4)")
    p.add_argument("--backbone-lr-factor", type=float,
                   help="backbone lr = lr * factor when fine-tuning pretrained weights (0.1)")
    p.add_argument("--mode", choices=["finetune", "frozen"], help="default finetune")
    p.add_argument("--weights", help="imagenet (hub cache only), none, or a state-dict PATH")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                   help="auto (default): bf16 autocast where the GPU or CPU computes bf16 "
                   "natively (AVX512-BF16, AMX), else fp32; bf16 elsewhere is emulated and slow")
    p.add_argument("--num-workers", type=int, help="DataLoader workers (default 0)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default "
                   "TRIAGE_TRAIN_THREADS, else one per usable core)")
    p.add_argument("--seed", type=int)
    p.add_argument("--target-sensitivity", type=float, help="for the threshold (default 0.95)")
    p.add_argument("--limit", type=int, help="at most N images per class (quick runs)")
    p.add_argument("--label", help="free text stored in ensemble.json")
    p.add_argument("--clinical-use-ok", action="store_true",
                   help="record not_for_clinical_use=false (default true)")
    p.set_defaults(func=run_train)


def _add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", help="run an ensemble on an external labelled set: table, ROC, calibration")
    p.add_argument("--model", type=Path, required=True, help="ensemble directory (ensemble.json)")
    p.add_argument("--data", type=Path, required=True, help="any layout `train` accepts")
    p.add_argument("--out", type=Path, help="report directory (default <model>/eval-<data name>)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, help="at most N images per class")
    p.set_defaults(func=run_evaluate)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``evaluate`` to the root ``cxr-triage`` parser."""
    _add_train(subparsers)
    _add_evaluate(subparsers)


def run_train(args: argparse.Namespace) -> int:
    """Train (or resume) a cross-validation run and write the ensemble directory."""
    from common.threads import prefer_passive_waits

    prefer_passive_waits()  # before torch loads: OpenMP reads it once (common.threads)
    from common.config import apply_overrides
    from training.cv import run_cross_validation
    from training.outputs import finish_run
    from training.settings import TrainingSettings

    settings = apply_overrides(
        TrainingSettings.from_env(),
        data=args.data, out=args.out, folds=args.folds, epochs=args.epochs,
        input_size=args.input_size, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, backbone_lr_factor=args.backbone_lr_factor,
        mode=args.mode, weights=args.weights, device=args.device, precision=args.precision,
        num_workers=args.num_workers, threads=args.threads, seed=args.seed,
        target_sensitivity=args.target_sensitivity, limit=args.limit, label=args.label,
        not_for_clinical_use=False if args.clinical_use_ok else None,
    )
    data, results = run_cross_validation(settings)
    manifest = finish_run(settings, data, results)
    print(f"ensemble {manifest.model_version} written to {settings.out} "
          f"(threshold {manifest.threshold:.4f}); report: {settings.out / 'report.md'}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    """Evaluate an ensemble on a labelled external set."""
    from training.evaluate import evaluate_ensemble, summary_line

    out = args.out or args.model / f"eval-{args.data.resolve().name}"
    summary = evaluate_ensemble(args.model, args.data, out, device=args.device,
                                batch_size=args.batch_size, limit=args.limit)
    print(f"{summary_line(summary)}\nreport: {out / 'report.md'}")
    from training.gate_eval import gate_line

    gate = gate_line(summary)  # both rejection rates when the data has a non-chest folder
    if gate:
        print(gate)
    return 0
