"""Drift between re-scoring runs: mean-probability distributions and indeterminate rates.

Each finished run in ``rescore_run`` keeps the mean probabilities of its scope (subsampled
to ``TRIAGE_DRIFT_SAMPLES``). A run is compared with a baseline run (the one before it, or
the first one shown) by the change of the mean, the two-sample Kolmogorov-Smirnov statistic
(scipy's ``ks_2samp`` when installed, else the same statistic computed here), the
Population Stability Index over the baseline's deciles, and the change of the indeterminate
rate. docs/rescore.md explains the metrics and the thresholds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PSI_BINS = 10
PSI_EPSILON = 1e-4  # an empty bin counts as this share, so PSI stays finite


@dataclass(frozen=True)
class RunStats:
    """The distribution summary of one run."""

    run_id: int
    model_version: str
    finished: str
    probabilities: tuple[float, ...]
    indeterminate_rate: float | None

    @property
    def n(self) -> int:
        return len(self.probabilities)

    def quantile(self, q: float) -> float:
        return float(np.quantile(self.probabilities, q)) if self.probabilities else math.nan

    @property
    def mean(self) -> float:
        return float(np.mean(self.probabilities)) if self.probabilities else math.nan


@dataclass(frozen=True)
class Thresholds:
    """Warn when any comparison exceeds one of these."""

    psi: float = 0.2
    ks: float = 0.2
    rate: float = 0.05


@dataclass(frozen=True)
class DriftRow:
    """One run against its baseline (no baseline: the first run shown)."""

    run: RunStats
    baseline: RunStats | None = None
    delta_mean: float | None = None
    ks: float | None = None
    psi: float | None = None
    delta_rate: float | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)


def ks_statistic(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sample KS statistic: the largest distance between the two ECDFs."""
    try:
        from scipy.stats import ks_2samp
    except ImportError:
        return ks_statistic_numpy(a, b)
    return float(ks_2samp(a, b).statistic)


def ks_statistic_numpy(a: Sequence[float], b: Sequence[float]) -> float:
    """The KS statistic without scipy (exact, ties handled as scipy does)."""
    x, y = np.sort(np.asarray(a, dtype=float)), np.sort(np.asarray(b, dtype=float))
    grid = np.concatenate([x, y])
    cdf_x = np.searchsorted(x, grid, side="right") / len(x)
    cdf_y = np.searchsorted(y, grid, side="right") / len(y)
    return float(np.max(np.abs(cdf_x - cdf_y)))


def psi(reference: Sequence[float], current: Sequence[float], bins: int = PSI_BINS) -> float:
    """Population Stability Index of ``current`` against ``reference``'s quantile bins.

    sum((c - r) * ln(c / r)) over bins; equal-width bins on [0, 1] when the reference is too
    concentrated for distinct quantiles.
    """
    ref = np.asarray(reference, dtype=float)
    cur = np.asarray(current, dtype=float)
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    if len(edges) < 2:
        edges = np.linspace(0, 1, bins + 1)[1:-1]
    r = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1)
    c = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=len(edges) + 1)
    r_share = np.maximum(r / len(ref), PSI_EPSILON)
    c_share = np.maximum(c / len(cur), PSI_EPSILON)
    return float(np.sum((c_share - r_share) * np.log(c_share / r_share)))


def _warnings(row: DriftRow, limits: Thresholds) -> tuple[str, ...]:
    found = []
    if row.psi is not None and row.psi > limits.psi:
        found.append(f"PSI {row.psi:.3f} > {limits.psi:g}")
    if row.ks is not None and row.ks > limits.ks:
        found.append(f"KS {row.ks:.3f} > {limits.ks:g}")
    if row.delta_rate is not None and abs(row.delta_rate) > limits.rate:
        found.append(f"indeterminate rate {row.delta_rate:+.3f} beyond ±{limits.rate:g}")
    return tuple(found)


def compare_runs(current: RunStats, baseline: RunStats | None, limits: Thresholds) -> DriftRow:
    """The metrics of ``current`` against ``baseline``."""
    if baseline is None or not baseline.n or not current.n:
        return DriftRow(current, baseline)
    rate = None
    if current.indeterminate_rate is not None and baseline.indeterminate_rate is not None:
        rate = current.indeterminate_rate - baseline.indeterminate_rate
    row = DriftRow(current, baseline, current.mean - baseline.mean,
                   ks_statistic(baseline.probabilities, current.probabilities),
                   psi(baseline.probabilities, current.probabilities), rate)
    return DriftRow(row.run, row.baseline, row.delta_mean, row.ks, row.psi, row.delta_rate,
                    _warnings(row, limits))


def drift_rows(runs: Sequence[RunStats], limits: Thresholds, *,
               baseline: str = "previous") -> list[DriftRow]:
    """Each run against the one before it (``previous``) or against the first (``first``)."""
    rows = []
    for index, run in enumerate(runs):
        base = None if index == 0 else runs[0] if baseline == "first" else runs[index - 1]
        rows.append(compare_runs(run, base, limits))
    return rows


def latest_per_version(runs: Sequence[RunStats]) -> list[RunStats]:
    """The latest run of each model version, ordered by that run."""
    latest: dict[str, RunStats] = {}
    for run in runs:
        latest[run.model_version] = run
    return sorted(latest.values(), key=lambda r: r.run_id)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or math.isnan(value) else format(value, spec)


def format_table(rows: Sequence[DriftRow]) -> str:
    """A fixed-width table, one line per run."""
    header = (f"{'RUN':>5} {'MODEL':<12} {'FINISHED (UTC)':<16} {'N':>6} {'MEAN':>7} "
              f"{'P10':>7} {'P50':>7} {'P90':>7} {'INDET':>6} {'VS':>5} {'dMEAN':>8} "
              f"{'KS':>6} {'PSI':>7} {'dINDET':>7}")
    lines = [header]
    for row in rows:
        r = row.run
        lines.append(
            f"{r.run_id:>5} {r.model_version[:12]:<12} {r.finished[:16]:<16} {r.n:>6} "
            f"{_fmt(r.mean, '.4f'):>7} {_fmt(r.quantile(0.1), '.4f'):>7} "
            f"{_fmt(r.quantile(0.5), '.4f'):>7} {_fmt(r.quantile(0.9), '.4f'):>7} "
            f"{_fmt(r.indeterminate_rate, '.3f'):>6} "
            f"{'-' if row.baseline is None else row.baseline.run_id:>5} "
            f"{_fmt(row.delta_mean, '+.4f'):>8} {_fmt(row.ks, '.3f'):>6} "
            f"{_fmt(row.psi, '.3f'):>7} {_fmt(row.delta_rate, '+.3f'):>7}")
    return "\n".join(lines)


def plot(runs: Sequence[RunStats], path: Path) -> Path:
    """Histograms, ECDFs and the indeterminate rate per run, as a PNG (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (hist, ecdf, rate) = plt.subplots(1, 3, figsize=(15, 4.5))
    bins = np.linspace(0, 1, 41)
    for run in runs:
        if not run.n:
            continue
        label = f"run {run.run_id} ({run.model_version[:8]}, n={run.n})"
        hist.hist(run.probabilities, bins=bins, histtype="step", density=True, label=label)
        values = np.sort(run.probabilities)
        ecdf.step(values, np.arange(1, len(values) + 1) / len(values), where="post",
                  label=label)
    hist.set(title="Mean probability (density)", xlabel="mean probability", xlim=(0, 1))
    ecdf.set(title="ECDF", xlabel="mean probability", ylabel="share of images", xlim=(0, 1))
    ids = [str(r.run_id) for r in runs]
    rate.bar(ids, [r.indeterminate_rate or 0.0 for r in runs], color="tab:orange")
    rate.set(title="Indeterminate rate", xlabel="run", ylim=(0, 1))
    hist.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
