"""The forward loop keeps freed host memory for the next batch (glibc), measured in page faults, not time."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from lastvit_eval.engine import host_memory

# allocate, touch and free a 48 MB activation-sized tensor a few times, as batches do, and count the minor
# page faults (fresh pages from the kernel) of the last rounds, before and after `keep_freed_memory`
SCRIPT = textwrap.dedent("""
    import resource, sys, torch
    from lastvit_eval.engine.host_memory import keep_freed_memory

    def one_round():
        a = torch.empty(12_000_000).fill_(1.0)
        b = torch.empty(3_000_000).fill_(2.0)
        del a, b

    def faults_per_round():
        for _ in range(8):  # the heap grows to its working size in the first rounds (how many: layout-dependent)
            one_round()
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            one_round()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 5

    before = faults_per_round()
    state = keep_freed_memory()
    after = faults_per_round()
    print(before, after, state, sep="|")
""")


def _run(env_extra: dict) -> tuple[float, float, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES",
                                                                                             "LD_PRELOAD")}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env={**env, **env_extra}, capture_output=True, text=True,
                         check=True).stdout.strip().splitlines()[-1]
    before, after, state = out.split("|")
    return float(before), float(after), state


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    before, after, state = _run({})
    assert state.startswith("kept"), state
    # 60 MB per round: about 14,600 fresh 4 KiB pages when every block is a new mmap, none once kept
    assert before > 5000, before
    assert after < before / 10, (before, after)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_the_users_allocator_settings_are_left_alone():
    before, after, state = _run({"MALLOC_ARENA_MAX": "2"})
    assert state == "left alone (MALLOC_* / GLIBC_TUNABLES set)"
    assert after > before / 2  # nothing changed: still a fresh mapping each time


def test_the_forward_loop_records_what_it_did(monkeypatch):
    import torch

    from lastvit_eval.engine.device import EngineSpec
    from lastvit_eval.engine.runner import BatchRunner
    from lastvit_eval.engine.taps import TapRequest
    from lastvit_eval.pooling import PoolingSpec

    monkeypatch.setattr(host_memory, "_state", "kept (test)")

    class Model:
        backbone = torch.nn.Linear(2, 2)  # set-up only moves it and reads `.tokens`
        backbone.tokens = backbone.forward

    runner = BatchRunner(Model(), TapRequest((PoolingSpec("cls"),), frozenset({"pooled"})),
                         EngineSpec(device="cpu", dtype="fp32"))
    runner.setup()
    assert runner.info["freed_host_memory"] == "kept (test)"
