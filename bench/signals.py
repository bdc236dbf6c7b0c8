"""Cost of the lifecycle signals: 3-step workflows with nobody listening, and with a receiver
on each of the four signals.

    python bench/signals.py [--workflows 500] [--rounds 5]

Uses DATABASE_URL (default postgres://postgres@127.0.0.1:5432/pgqrs_bench). Rounds alternate
the two cases, so that drift in the machine hits both alike; the medians are printed, with the
cost of the test a step makes when nobody listens (``signal.receivers``), measured alone.
"""

from __future__ import annotations

import argparse
import statistics
import timeit
from typing import Any

import common  # sets Django up; must come first


def receiver(sender: Any, **kwargs: Any) -> None:
    """Does nothing: what is measured is the sending."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workflows", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    common.setup()
    from django_pgqrs import signals

    every = [
        signals.workflow_started,
        signals.step_finished,
        signals.workflow_finished,
        signals.workflow_recovered,
    ]
    common.inline(50)  # warm up
    seconds: dict[str, list[float]] = {"nobody listens": [], "a receiver on each": []}
    for _ in range(args.rounds):
        seconds["nobody listens"].append(common.inline(args.workflows))
        for signal in every:
            signal.connect(receiver)
        seconds["a receiver on each"].append(common.inline(args.workflows))
        for signal in every:
            signal.disconnect(receiver)
        common.reset()
    test = min(
        timeit.repeat("signals.step_finished.receivers and None", globals=locals(), number=100_000)
    )
    quiet = statistics.median(seconds["nobody listens"])
    print(f"{args.workflows} workflows of 3 steps x {args.rounds} rounds, medians")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"{name:<20} {median * 1e6:>7.0f} us/wf  ({(median / quiet - 1) * 100:+.1f}%)")
    per_step = test / 100_000
    print(
        f"the test per step or run when nobody listens: {per_step * 1e9:.0f} ns "
        f"({per_step * 5 / quiet * 100:.4f}% of a workflow: 5 tests)"
    )


if __name__ == "__main__":
    main()
