"""Wake-up latency of suspended workflows on a worker: after a sleep, and after an event.

    python bench/primitives.py [--samples 50] [--sleep 0.5]

Uses DATABASE_URL (default postgres://postgres@127.0.0.1:5432/pgqrs_bench, created if missing;
its workflows are deleted). With one idle worker (default settings, sleeps suspending however
short), prints p50 and p99 of
  (a) sleep-to-wake: how long after its wake-up time a sleeping workflow's next step starts
      (a sleeping workflow is found by the worker's poll, every POLL_SECONDS);
  (b) event-to-wake: how long after send_event() a workflow waiting for it goes on (the event
      wakes it at once: NOTIFY).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import time

import common  # sets Django up; must come first

SUSPEND = {"PGQRS_BENCH_SUSPEND_AFTER_SECONDS": "0.0001"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--sleep", type=float, default=0.5, help="seconds each workflow sleeps")
    args = parser.parse_args()
    os.environ.update(SUSPEND)
    common.setup()
    from bench.benchapp.workflows import sleeper, waiter
    from django_pgqrs import Workflow, send_event
    from django_pgqrs.conf import conf

    common.reset()
    worker = subprocess.Popen(
        common.worker_command("-v", "0"), env=common.worker_env(**SUSPEND), cwd=common.ROOT
    )
    try:
        late = []
        for _ in range(args.samples):
            before, woke = sleeper.start(args.sleep).result(timeout=60, poll=0.005)
            late.append(woke - before - args.sleep)
        print(
            f"sleep-to-wake, {args.sleep}s sleeps (poll every {conf.POLL_SECONDS:g}s): "
            f"{common.percentiles(sorted(late))}"
        )
        delays = []
        for _ in range(args.samples):
            handle = waiter.start()
            while Workflow.objects.filter(pk=handle.id, status="SLEEPING").count() == 0:
                time.sleep(0.002)
            sent = time.time()
            send_event(handle.id, "go")
            delays.append(handle.result(timeout=60, poll=0.005) - sent)
        print(f"event-to-wake (send_event, NOTIFY): {common.percentiles(sorted(delays))}")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)


if __name__ == "__main__":
    main()
