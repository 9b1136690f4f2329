"""Default torch threads and OpenMP waits (common.threads) for worker, rescore, train and up."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from common import threads
from cxr_triage.up import Stack


def test_threads_follow_the_cores_this_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 2, 5})
    assert threads.usable_cores() == 3
    assert threads.inference_threads() == 3
    assert threads.inference_threads(reserve=1) == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
    assert threads.inference_threads(reserve=1) == 1  # never fewer than one


def test_up_leaves_the_node_a_core_and_makes_waits_passive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})
    env = Stack({}, children=[]).env
    assert env["TRIAGE_TORCH_THREADS"] == "1" and env["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)))
    assert Stack({}, children=[]).env["TRIAGE_TORCH_THREADS"] == "7"
    # what the operator set wins
    given = Stack({"TRIAGE_TORCH_THREADS": "4", "OMP_WAIT_POLICY": "ACTIVE"}, children=[]).env
    assert given["TRIAGE_TORCH_THREADS"] == "4" and given["OMP_WAIT_POLICY"] == "ACTIVE"


def _child(code: str, env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-c", code], env=env, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_passive_waits_are_set_before_torch_loads_and_a_given_policy_is_kept() -> None:
    code = ("import os\nfrom common.threads import prefer_passive_waits\n"
            "print(prefer_passive_waits(), os.environ['OMP_WAIT_POLICY'])")
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _child(code, base) == "True PASSIVE"
    assert _child(code, {**base, "OMP_WAIT_POLICY": "ACTIVE"}) == "True ACTIVE"
    late = "import torch\n" + code  # too late for this process: it says so
    assert _child(late, base) == "False PASSIVE"
