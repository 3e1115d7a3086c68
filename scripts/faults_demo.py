"""Run an experiment with one request in five failing; count what the store says.

Four policies generate through a fault-injecting proxy (HTTP 429 and 500,
hangs past the client's timeout, malformed and truncated bodies) in front of
a fake OpenAI-compatible server; the LLM judge answers through a second proxy
that also returns unparsable verdicts. The run goes to its budget of 150 duels
with the backends' own retry delays. Afterwards the store is audited with the
same checks as ``tests/test_reliability.py`` and a short table is printed, for
the release notes.

Usage::

    python scripts/faults_demo.py [--duels 150] [--rate 0.2] [--seed 7]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_reliability import audit_store, run_faulty_experiment  # noqa: E402


class _RetryCounter(logging.Handler):
    """Counts the backends' retries from their debug lines."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.retries = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "retrying in" in record.getMessage():
            self.retries += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duels", type=int, default=150, help="duel budget")
    parser.add_argument("--rate", type=float, default=0.2, help="fault rate")
    parser.add_argument("--seed", type=int, default=7, help="run and fault seed")
    args = parser.parse_args()

    counter = _RetryCounter()
    backend_logger = logging.getLogger("llmpo.backends.openai_backend")
    backend_logger.setLevel(logging.DEBUG)
    backend_logger.addHandler(counter)
    with tempfile.TemporaryDirectory(prefix="llmpo-faults-") as folder:
        start = time.perf_counter()
        # The fault proxy's threads print the broken pipes of clients that gave
        # up on a hang; only the run's own output is worth reading.
        stderr, sys.stderr = sys.stderr, open(os.devnull, "w")
        try:
            outcome, policy_faults, judge_faults = run_faulty_experiment(
                Path(folder), n_policies=4, duels=args.duels, rate=args.rate,
                seed=args.seed, judge_attempts=2, concurrency=8, delta=0.001,
            )
        finally:
            sys.stderr.close()
            sys.stderr = stderr
        elapsed = time.perf_counter() - start
        audit = audit_store(outcome.store_path)

    states = audit["states"]
    faults = policy_faults + judge_faults
    rows = [
        ("run", f"{outcome.status} ({outcome.decision['reason']}), leader "
                f"{outcome.decision['leader_name']}, {elapsed:.1f} s"),
        ("fault rate", f"{args.rate:.0%} of requests, policies and judge"),
        ("duels proposed", audit["proposed"]),
        ("  done", states["done"]),
        ("  unparsable", states["unparsable"]),
        ("  failed", states["failed"]),
        ("  still proposed", states["proposed"]),
        ("faults injected", f"{sum(faults.values())}: " + ", ".join(
            f"{kind} {n}" for kind, n in sorted(faults.items()))),
        ("  at the policies", sum(policy_faults.values())),
        ("  at the judge", sum(judge_faults.values())),
        ("backend retries", counter.retries),
        ("judge re-asked", f"{audit['retried']} duels"),
        ("failed duels by cause", ", ".join(
            f"{kind} {n}" for kind, n in sorted(Counter(
                audit["failed_reasons"]).items())) or "none"),
        ("counted duels", f"{audit['counted']} (done rows {audit['done_rows']})"),
        ("decision replays from store", "yes" if audit["decision_replayed"] else "NO"),
        ("duplicates", audit["duplicates"]),
        ("invented verdicts", audit["invented"]),
        ("verdicts dropped", audit["dropped"]),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    kept = (
        states["proposed"] == 0
        and audit["counted"] == audit["done_rows"] == states["done"]
        and audit["duplicates"] == audit["invented"] == audit["dropped"] == 0
        and not audit["not_done_counted"]
        and audit["decision_replayed"]
    )
    print("the store keeps its word" if kept else "THE STORE DOES NOT KEEP ITS WORD")
    sys.exit(0 if kept else 1)


if __name__ == "__main__":
    main()
