"""Chaos, at length: workers SIGKILLed, their sessions cut and their database restarted.

    python bench/chaos.py [--workflows 400] [--workers 3] [--concurrency 2] [--kills 60]
                          [--cuts 12] [--restarts 1] [--seconds 90] [--timeout 600] [--seed N]

The long version of tests/test_chaos.py (tests/chaos.py says what is done and checked). It runs
on a throwaway PostgreSQL cluster of its own (initdb into a temporary directory; as root, as the
`postgres` user), never on DATABASE_URL, since it restarts the server and terminates sessions.
The kills, cuts and restarts are spread over about three quarters of --seconds, and stop once
their counts are reached; the run ends when every workflow has finished, or fails at --timeout.
Prints the report, whose last line is the summary, e.g.
`workflows 400, kills 60, connection cuts 12, restarts 1, violations: 0`; exits 1 on any
violation, keeping the workers' logs and the step trace (--keep keeps them always).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import common  # noqa: F401 - puts the repository on sys.path; must come first

from tests.chaos import ChaosConfig, run_chaos
from tests.cluster import PrivateCluster, postgres_bindir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workflows", type=int, default=400)
    parser.add_argument("--workers", type=int, default=3, help="worker processes at a time")
    parser.add_argument("--concurrency", type=int, default=2, help="threads per worker process")
    parser.add_argument("--kills", type=int, default=60, help="workers to SIGKILL")
    parser.add_argument("--cuts", type=int, default=12, help="times to cut every session")
    parser.add_argument("--restarts", type=int, default=1, help="database restarts")
    parser.add_argument("--seconds", type=float, default=90, help="the chaos's planned length")
    parser.add_argument("--timeout", type=float, default=600, help="the whole run's limit")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the logs and the trace")
    args = parser.parse_args()
    bindir = postgres_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL's initdb was not found (pg_config --bindir).")
    config = ChaosConfig(
        workflows=args.workflows,
        workers=args.workers,
        concurrency=args.concurrency,
        kills=args.kills,
        cuts=args.cuts,
        restarts=args.restarts,
        seconds=args.seconds,
        timeout=args.timeout,
        seed=args.seed,
    )
    workdir = Path(tempfile.mkdtemp(prefix="pgqrs-chaos-"))
    with PrivateCluster(bindir) as cluster:
        print(f"private cluster: PostgreSQL in {cluster.directory}, port {cluster.port}")
        sys.stdout.flush()
        report = run_chaos(cluster, config, workdir)
    print(report.render(limit=100))
    if report.violations or args.keep:
        print(f"(logs and trace kept in {workdir})", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if report.violations:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
