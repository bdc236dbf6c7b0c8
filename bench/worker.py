"""Worker throughput and enqueue-to-start latency, against the inline rate.

    python bench/worker.py [--workflows 1000] [--processes 1,2,4] [--concurrency 1] [--samples 200]

Uses DATABASE_URL (default postgres://postgres@127.0.0.1:5432/pgqrs_bench, created if missing;
its workflows are deleted). For each number of worker processes: enqueues the 3-step workflows,
starts that many `pgqrs_worker --burst` processes, and times them from their start to their exit
(process start-up included), and from the first step's start to the last workflow's end (the
"running" columns: the rate once the workers are up). Prints workflows/s and the ratio to the
inline rate (`fn.run`, as bench/checkpoint.py measures it) in the same run. Then, with one
idle worker listening, enqueues workflows one at a time and prints the enqueue-to-first-step
latency, p50 and p99.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time

import common  # sets Django up; must come first


def drain(workflows: int, processes: int, concurrency: int) -> tuple[float, float]:
    """Seconds for ``processes`` burst workers to run ``workflows`` queued workflows.

    Return the time from starting the processes to their exit, and the time from the first
    step's start to the last workflow's end (the rate once the workers are up).
    """
    from django.db.models import Max, Min

    from bench.benchapp.workflows import three_steps
    from django_pgqrs.models import Workflow, WorkflowStep

    common.reset()
    for n in range(workflows):
        three_steps.start(n)
    start = time.perf_counter()
    workers = [
        subprocess.Popen(
            common.worker_command("--burst", "-v", "0", "--concurrency", str(concurrency)),
            env=common.worker_env(),
            cwd=common.ROOT,
        )
        for _ in range(processes)
    ]
    for worker in workers:
        if worker.wait() != 0:
            raise SystemExit(f"a worker exited with {worker.returncode}")
    elapsed = time.perf_counter() - start
    done = Workflow.objects.filter(status="SUCCESS").count()
    if done != workflows:
        raise SystemExit(f"only {done} of {workflows} workflows succeeded")
    first = WorkflowStep.objects.aggregate(first=Min("started_at"))["first"]
    last = Workflow.objects.aggregate(last=Max("updated_at"))["last"]
    return elapsed, (last - first).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workflows", type=int, default=1000)
    parser.add_argument("--processes", default="1,2,4")
    parser.add_argument("--concurrency", type=int, default=1, help="threads per worker process")
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    common.setup()
    from django.db import connection

    common.inline(50)
    inline = common.inline(args.workflows // 2)
    common.reset()
    db = connection.settings_dict
    print(
        f"database: {connection.vendor} {db['HOST'] or 'local'}/{db['NAME']}; "
        f"{args.workflows} queued 3-step workflows; {os.cpu_count()} CPUs; "
        f"{args.concurrency} thread(s) per worker process"
    )
    print(f"inline (fn.run, one process): {1 / inline:.0f} workflows/s")
    print(
        f"{'processes':>9} {'seconds':>8} {'wf/s':>7} {'x inline':>9} "
        f"{'running':>8} {'wf/s':>7} {'x inline':>9}"
    )
    for processes in [int(n) for n in args.processes.split(",")]:
        seconds, running = drain(args.workflows, processes, args.concurrency)
        rate, steady = args.workflows / seconds, args.workflows / running
        print(
            f"{processes:>9} {seconds:>8.2f} {rate:>7.0f} {rate * inline:>9.2f} "
            f"{running:>8.2f} {steady:>7.0f} {steady * inline:>9.2f}"
        )
    times = common.latency(args.samples)
    print(f"enqueue-to-start with LISTEN/NOTIFY, {common.percentiles(times)}")


if __name__ == "__main__":
    main()
