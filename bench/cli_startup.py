"""Start-up time of the read-only commands (issue 13): wall and CPU seconds per run.

    .venv/bin/python bench/cli_startup.py [--repeat 5]

Each command runs against a freshly migrated SQLite database. Side by side in the same run:
building the parser from every package's CLI module (what every command paid before the
parser became lazy) and from the chosen command's module only. CPU time (user + sys of the
child) is the figure to trust on a shared machine; wall time includes waiting for a core.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = (["worklist"], ["deliveries"], ["db", "current"], ["model", "list"], ["drift"])
PARSERS = {
    "parser, every module": "from cxr_triage.cli import build_parser; build_parser()",
    "parser, worklist only": "from cxr_triage.cli import build_parser; build_parser('worklist')",
}


def cpu_model() -> str:
    """The machine line every figure carries (bench/machine.py: CPU, flags, load)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.machine import describe_machine

    return describe_machine(torch_facts=False)

def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall s, child CPU s) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, env=env, capture_output=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(cpu_model())
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "TRIAGE_DB_URL": f"sqlite:///{tmp}/triage.db",
               "TRIAGE_VAR_DIR": f"{tmp}/var", "TRIAGE_MODEL_STORE": f"{tmp}/models"}
        subprocess.run([sys.executable, "-m", "cxr_triage", "db", "upgrade"], env=env,
                       check=True, capture_output=True)
        runs = {" ".join(c): [sys.executable, "-m", "cxr_triage", *c] for c in COMMANDS}
        runs |= {label: [sys.executable, "-c", code] for label, code in PARSERS.items()}
        runs["python -c pass"] = [sys.executable, "-c", "pass"]
        print(f"{'command':<24} {'wall median s':>14} {'CPU median s':>13}")
        for label, argv in runs.items():
            samples = [timed(argv, env) for _ in range(args.repeat)]
            wall = statistics.median(s[0] for s in samples)
            cpu = statistics.median(s[1] for s in samples)
            print(f"{label:<24} {wall:>14.2f} {cpu:>13.2f}")


if __name__ == "__main__":
    main()
