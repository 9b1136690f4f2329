"""Stage distances combined by their largest value (the gate) or by Fisher's method.

Run: ``.venv/bin/python bench/gate_stage_fisher.py --model DIR --probe DIR`` after
``bench/gate_rates.py`` has written the probe folder (``DIR/non-chest``).

The gate takes, per fold, the largest of the four scaled stage distances. Haroush et al. (2022,
"A statistical framework for efficient out of distribution detection in deep neural networks")
instead turn each layer's score into a p-value against in-distribution scores and combine them
with Fisher's method, which favours images somewhat unusual in every layer over images very
unusual in one. Both rules are computed here from the same features: each stage's p-value
against the pooled out-of-fold stage distances (conformal: ``(1 + #ref >= x) / (n + 1)``), the
outlier logit sharing the 2 % as in the gate (``choose_thresholds``). Printed per rule: the
out-of-fold rate, the cross-fitted rate (reference and thresholds from the other folds) and the
probe's refusals per kind (docs/results/safety-gate.md).
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import describe_machine
from training.gate_fit import file_units, image_features
from training.gate_probe import probe_kind
from training.manifest import load_manifest
from training.model import load_fold_model
from training.ood import TARGET_REJECTION, load_gate
from training.outlier import choose_thresholds

Rule = Callable[[np.ndarray], np.ndarray]


def p_values(reference: np.ndarray, x: np.ndarray, *, inside: bool) -> np.ndarray:
    """(stages, M) conformal p-values of (stages, M) distances against (stages, N) reference
    distances; ``inside`` when ``x`` is the reference itself (each counts itself once)."""
    count = (reference[:, None, :] >= x[:, :, None]).sum(2)
    return (count + (0 if inside else 1)) / (reference.shape[1] + 1)


RULES: dict[str, Rule] = {
    "largest stage (the gate)": lambda p: -np.log(p.min(0)),
    "Fisher over 4 stages": lambda p: -2.0 * np.log(p).sum(0),
}


def stage_distances(model_dir: Path, probe: Path) -> dict[str, np.ndarray]:
    """Out-of-fold stage distances and logits of the development images (one fold each), and
    every fold's stage distances and logits of the probe images."""
    manifest = load_manifest(model_dir)
    config, gate = manifest.preprocess_config(), load_gate(model_dir, manifest.ood_gate)
    if gate is None or gate.outlier_threshold is None:
        raise SystemExit(f"{model_dir} has no gate with outlier heads")
    with (model_dir / "oof_gate.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    folds = np.array([int(r["fold"]) for r in rows])
    units = file_units(config, [Path(r["path"]) for r in rows])
    files = sorted((probe / "non-chest").iterdir())
    probe_units = file_units(config, files)
    oof, oof_logit = np.zeros((4, len(rows))), np.zeros(len(rows))
    seen, seen_logit = [], []
    for k, path in enumerate(manifest.fold_paths(model_dir)):
        model, stats = load_fold_model(path, len(manifest.class_names)), gate.folds[k]
        assert stats.outlier is not None
        mine = folds == k
        features = image_features(model, units[torch.from_numpy(mine)], config)
        oof[:, mine], oof_logit[mine] = stats.layer_distances(features), \
            stats.outlier.logit(features)
        features = image_features(model, probe_units, config)
        seen.append(stats.layer_distances(features))
        seen_logit.append(stats.outlier.logit(features))
    return {"folds": folds, "oof": oof, "oof_logit": oof_logit, "probe": np.stack(seen),
            "probe_logit": np.mean(seen_logit, axis=0),
            "kinds": np.array([probe_kind(f) for f in files])}


def measure(rule: Rule, d: dict[str, np.ndarray], target: float) -> str:
    """One rule's out-of-fold, cross-fitted and probe rates, as a line."""
    oof, logit, folds = d["oof"], d["oof_logit"], d["folds"]
    own = rule(p_values(oof, oof, inside=True))
    served = np.mean([rule(p_values(oof, fold, inside=False)) for fold in d["probe"]], axis=0)
    t_score, t_logit = choose_thresholds(own, logit, target)
    refused_oof = (own > t_score) | (logit > t_logit)
    refused = (served > t_score) | (d["probe_logit"] > t_logit)
    crossfit = 0
    for fold in np.unique(folds):
        others, mine = folds != fold, folds == fold
        reference = oof[:, others]
        a, b = choose_thresholds(rule(p_values(reference, reference, inside=True)),
                                 logit[others], target)
        crossfit += int(((rule(p_values(reference, oof[:, mine], inside=False)) > a)
                         | (logit[mine] > b)).sum())
    kinds = d["kinds"]
    per_kind = ", ".join(f"{k} {int(refused[kinds == k].sum())}/{int((kinds == k).sum())}"
                         for k in np.unique(kinds))
    lateral = served[kinds == "lateral"]
    far = f"; laterals {lateral.min():.2f}-{lateral.max():.2f}" if len(lateral) else ""
    return (f"out of fold {refused_oof.mean():.2%}, cross-fitted {crossfit / len(logit):.2%}; "
            f"probe {refused.mean():.1%} ({per_kind}); threshold {t_score:.2f}{far}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--probe", type=Path, required=True,
                        help="the folder bench/gate_rates.py --out wrote")
    args = parser.parse_args(argv)
    print(describe_machine())
    data = stage_distances(args.model, args.probe)
    for name, rule in RULES.items():
        print(f"{name}: {measure(rule, data, TARGET_REJECTION)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
