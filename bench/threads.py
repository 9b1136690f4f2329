"""Thread settings under load: each command's default, idle and beside a busy process.

Every case runs in a fresh process (OpenMP reads ``OMP_WAIT_POLICY`` when torch loads), once
on its own and once while a competing process spins on one core (``python -c 'while True:
pass'``, pinned nowhere: the scheduler moves it like any other job), alternating, ``--rounds``
times; the median img/s is printed with the ratio loaded / idle.

Workloads (random weights; the figures compare thread settings, not models):

- ``infer``: the worker's ``Ensemble.predict`` (``--folds`` ResNet-50 folds, ``--size`` px,
  batch 8, torch fp32) on a preloaded batch: ``worker``, ``up`` and ``rescore`` inference.
- ``live``: ``score_instances`` on a SQLite database holding ``--images`` JPEG 2000 and JPEG-LS
  2500 x 2000 CRs: claim, decode, predict and record in batches of 8, with and without
  decoding the next batch while the current one is predicted.
- ``openvino``: the same ensemble compiled by OpenVINO in bf16 (what ``auto`` runs on an
  AVX-512 BF16 CPU), threads pinned to cores (OpenVINO's default) or not.
- ``train``: forward + backward + AdamW step of one ResNet-50 at 128 px, batch 16.

    .venv/bin/python bench/threads.py --rounds 2 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import describe_machine
from bench.threads_work import OV_PINNING_ENV


@dataclass(frozen=True)
class Case:
    """One thread setting of one workload; ``default_of`` names the commands it is the
    default of (on this machine)."""

    workload: str
    threads: int
    passive: bool = False
    decode_ahead: bool = False
    default_of: str = ""
    env: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.workload == "openvino":
            pinned = "not pinned" if self.env.get(OV_PINNING_ENV) == "0" else "pinned (default)"
            return f"openvino bf16: {self.threads} thread(s), {pinned}"
        waits = "passive" if self.passive else "active"
        ahead = " + decode-ahead (decoding process)" if self.decode_ahead else ""
        return f"{self.workload}: {self.threads} torch thread(s), {waits} waits{ahead}"


def cases(workloads: list[str]) -> list[Case]:
    """The defaults this tree picks here, and the settings they replace."""
    from common.threads import inference_threads, usable_cores

    cores, up = usable_cores(), inference_threads(reserve=1)
    chosen = {
        "infer": [
            Case("infer", cores, default_of="old worker, rescore (torch's default)"),
            Case("infer", cores, passive=True, default_of="worker, rescore"),
            Case("infer", 1, default_of="old up"),
            Case("infer", up, passive=True, default_of="up"),
        ],
        "live": [
            Case("live", cores, default_of="old worker (decode, then predict)"),
            Case("live", cores, passive=True),
            Case("live", cores, passive=True, decode_ahead=True, default_of="worker"),
            Case("live", up, passive=True),
            Case("live", up, passive=True, decode_ahead=True, default_of="up"),
        ],
        "openvino": [
            Case("openvino", cores, default_of="worker (auto: bf16 on OpenVINO here)"),
            Case("openvino", cores, env={OV_PINNING_ENV: "0"}),
            Case("openvino", up, default_of="up"),
        ],
        "train": [
            Case("train", cores, default_of="old train (torch's default)"),
            Case("train", cores, passive=True, default_of="train"),
        ],
    }
    unique: dict[str, Case] = {}
    for workload in workloads:
        for case in chosen[workload]:
            unique.setdefault(case.label, case)
    return list(unique.values())


def busy_process() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def run_case(case: Case, args: argparse.Namespace, loaded: bool, workdir: Path) -> float:
    """img/s of one case in a fresh process, beside a busy process when ``loaded``."""
    env = {**os.environ, **case.env}
    env.pop("OMP_WAIT_POLICY", None)
    if case.passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    command = [sys.executable, __file__, "--child", case.workload, "--threads",
               str(case.threads), "--seconds", str(args.seconds), "--folds", str(args.folds),
               "--size", str(args.size), "--workdir", str(workdir), "--images",
               str(args.images)]
    if case.decode_ahead:
        command.append("--decode-ahead")
    competitor = busy_process() if loaded else None
    try:
        out = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    return float(json.loads(out.stdout.strip().splitlines()[-1])["img_per_s"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="infer,live,train")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0, help="timed part of each run")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=32, help="live: images (half J2K, half "
                        "JPEG-LS)")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--decode-ahead", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        from bench.threads_work import run_child

        print(json.dumps({"img_per_s": run_child(args)}))
        return 0
    return _parent(args)


def _parent(args: argparse.Namespace) -> int:
    from bench.threads_work import prepare

    print(describe_machine(torch_facts=False))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cxr-bench-threads-"))
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    prepare(workdir, workloads, args)
    results: dict[str, tuple[list[float], list[float]]] = {}
    for round_index in range(args.rounds):
        for case in cases(workloads):
            idle, loaded = results.setdefault(case.label, ([], []))
            idle.append(run_case(case, args, False, workdir))
            loaded.append(run_case(case, args, True, workdir))
            print(f"round {round_index + 1}: {case.label}: idle {idle[-1]:.2f}, "
                  f"beside a busy process {loaded[-1]:.2f} img/s", flush=True)
    print(f"\nmedian of {args.rounds} rounds, {args.folds} folds at {args.size} px "
          f"(train: 1 model at 128 px), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| case | default of | idle img/s | beside a busy process | loaded / idle |")
    print("|---|---|---|---|---|")
    for case in cases(workloads):
        idle, loaded = results[case.label]
        a, b = statistics.median(idle), statistics.median(loaded)
        print(f"| {case.label} | {case.default_of or '-'} | {a:.2f} | {b:.2f} | {b / a:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
