"""The image gate's rejection rates on a trained ensemble (docs/results/safety-gate.md).

Run: ``.venv/bin/python bench/gate_rates.py --model DIR [--out DIR] [--per-kind 20]``.

1. In-distribution, out of fold: read from the manifest's ``ood_gate`` block (training).
2. Not frontal chest radiographs: a probe folder (``training.gate_probe``: crops, rotations
   by 90 degrees, inverted, blank, noise, lateral surrogates, and the real non-chest DICOMs of
   ../shared/data/dicom), scored by ``cxr-triage evaluate``; the rate per kind is printed.
3. The real chest CR/DX DICOMs with Body Part Examined removed: header rules and gate.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from pydicom import dcmread

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import describe_machine
from dicom_node.filters import TriageRules
from training.gate_eval import gate_scores
from training.gate_probe import probe_kind, write_probe_set
from training.manifest import load_manifest
from training.ood import load_gate
from training.outlier import OUTLIER_KINDS
from training.preprocessing import load_unit_image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _rules_and_gate(model: Path, files: list[Path]) -> list[tuple[str, str, float, bool]]:
    """(file, header verdict, gate score, not assessable) with Body Part Examined removed."""
    manifest = load_manifest(model)
    gate = load_gate(model, manifest.ood_gate)
    assert gate is not None, f"{model} has no gate statistics"
    rules, config = TriageRules(), manifest.preprocess_config()
    units = torch.stack([torch.from_numpy(load_unit_image(p, size=config.size))[None]
                         for p in files])
    scores = gate_scores(gate, manifest, model, units)
    rows = []
    for path, score in zip(files, scores, strict=True):
        ds = dcmread(path, force=True, stop_before_pixels=True)
        attributes = {k: str(ds.get(k, "") or "") for k in rules.keywords}
        attributes["BodyPartExamined"] = ""
        verdict = rules.evaluate(attributes)
        rows.append((path.name, "candidate" if verdict.candidate else str(verdict.reason),
                     float(score), bool(score > gate.threshold)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("/tmp/cxr-gate-probe"))
    parser.add_argument("--per-kind", type=int, default=20)
    parser.add_argument("--chest", type=int, default=60, help="development images linked")
    args = parser.parse_args()
    print(f"{describe_machine()}; torch {torch.__version__}")
    gate = load_manifest(args.model).ood_gate or {}
    print(f"out-of-fold (training): {gate.get('oof_rejection')} of {gate.get('oof_images')} "
          f"refused, cross-fitted {gate.get('crossfit_rejection')}, threshold "
          f"{gate.get('threshold')}")
    pngs = sorted((SHARED / "cxr").glob("*/*.png"))
    chosen = [pngs[i] for i in np.random.default_rng(1).permutation(len(pngs))[:args.chest]]
    manifest_rows = list(csv.DictReader((SHARED / "dicom" / "manifest.csv").open()))
    real = [SHARED / "dicom" / r["file"] for r in manifest_rows if r["role"] == "non-chest"]
    counts = write_probe_set(args.out, chosen, labels=[p.parent.name for p in chosen],
                             real_non_chest=real, per_kind=args.per_kind)
    print(f"probe set {args.out}: {counts}")
    evaluated = args.out.with_name(f"{args.out.name}-eval")  # not inside the data folder
    run = subprocess.run([sys.executable, "-m", "cxr_triage", "evaluate", "--model",
                          str(args.model), "--data", str(args.out), "--out",
                          str(evaluated), "--device", "cpu"],
                         capture_output=True, text=True)
    print(run.stdout.strip() or run.stderr[-2000:])
    with (evaluated / "gate_predictions.csv").open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["label"] == "non-chest"]
    kinds: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    for row in rows:
        kind = probe_kind(Path(row["path"]))
        kinds[kind] += 1
        refused[kind] += int(row["not_assessable"])
    shown = {"rot90", "inverted", "crop"} & set(OUTLIER_KINDS)
    for kind in sorted(kinds):
        note = " (a kind the outlier head was shown)" if kind in shown else ""
        print(f"  {kind:10s} {refused[kind]:3d}/{kinds[kind]:3d} not assessable{note}")
    unseen = [k for k in kinds if k not in shown]
    print(f"  kinds never shown to the outlier head: "
          f"{sum(refused[k] for k in unseen)}/{sum(kinds[k] for k in unseen)} not assessable")
    chest = [SHARED / "dicom" / r["file"] for r in manifest_rows if r["role"] == "chest"]
    print("real chest DICOMs with Body Part Examined removed (rules, gate score, refused):")
    for name, verdict, score, unlike in _rules_and_gate(args.model, chest + real):
        print(f"  {name[:44]:44s} {verdict[:40]:40s} {score:7.3f} {unlike}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
