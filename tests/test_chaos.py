"""Workers under chaos: SIGKILLs, cut connections and a database restart break no guarantee.

The short version, for CI; ``python bench/chaos.py`` runs the long one. See tests/chaos.py for
what is done and checked.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.chaos import ChaosConfig, check_bodies, check_outcomes, read_trace, run_chaos
from tests.cluster import PrivateCluster

CONFIG = ChaosConfig(
    workflows=150,
    workers=3,
    concurrency=2,
    kills=20,
    cuts=10,
    restarts=1,
    seconds=25,
    timeout=150,
)


def test_workers_keep_every_guarantee_under_chaos(
    private_postgres: PrivateCluster, postgres_only: None, tmp_path: Path
) -> None:
    report = run_chaos(private_postgres, CONFIG, tmp_path)
    if report.violations:
        pytest.fail(report.render(), pytrace=False)
    if (report.kills, report.cuts, report.restarts) != (CONFIG.kills, CONFIG.cuts, CONFIG.restarts):
        pytest.fail(f"the workflows finished before the chaos did:\n{report.render()}")
    print(report.render())


def test_the_checks_see_each_kind_of_violation() -> None:
    # Saved rows and a trace as a broken engine would leave them: one violation of each kind.
    workflows = [
        (1, "chaos_plain", "SUCCESS", {"args": [0]}, 3, None, None),
        (2, "chaos_atomic", "SUCCESS", {"args": [1]}, 9, None, None),
        (3, "chaos_retry", "ERROR", {"args": [2]}, None, {"type": "OperationalError"}, None),
        (4, "chaos_loop", "RUNNING", {"args": [3]}, None, None, "host:7:8"),
        (5, "chaos_plain", "SUCCESS", {"args": [4]}, 12, None, None),
    ]
    steps = {
        (1, "scale"): ("SUCCESS", 100.011),
        (1, "offset"): ("SUCCESS", 100.031),
        **{(2, key): ("SUCCESS", 100.3) for key in ("scale", "record", "record#2", "record#3")},
        (5, "scale"): ("SUCCESS", 100.1),
        (5, "offset"): ("SUCCESS", 100.2),
    }
    effects = {(2, "record"): 1, (2, "record#2"): 2, (2, "record#3"): 1}
    trace = [
        "start 1 scale 10 1 100.000 -",
        "end 1 scale 10 1 100.010 ok",
        "start 1 offset 10 1 100.020 -",
        "end 1 offset 10 1 100.030 ok",
        "start 2 scale 10 2 100.000 -",  # killed in its body at 100.5
        "start 2 scale 11 1 100.200 -",  # taken over while the killed owner still ran it
        "end 2 scale 11 1 100.210 ok",
        "start 1 scale 12 1 100.500 -",  # a finished step run again
        "end 1 scale 12 1 100.510 ok",
        "end 5 offset 13 1 100.600 ok",
    ]
    bodies, problems = read_trace(trace, gone={10: 100.5}, killed={10}, now=101.0)
    assert [body.outcome for body in bodies] == ["ok", "ok", "killed", "ok", "ok"]
    violations = (
        problems
        + check_outcomes(workflows, steps, effects)
        + check_bodies(bodies, steps, tolerance=0.005, t0=100.0)
    )
    found = sorted(
        re.findall(r"^\((\w)\) (?:trace|workflow (\d+))", text)[0] for text in violations
    )
    assert found == [
        ("a", "3"),
        ("a", "5"),
        ("b", "2"),
        ("c", ""),
        ("c", "2"),
        ("d", "1"),
        ("e", "4"),
    ], violations
