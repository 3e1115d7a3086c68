"""Compare the fast program of the proportions with the CVXPY reference.

For every ``bt`` instance of a suite, solve the regularised convex program of the
proportions (MATH.md section 3) from a cold start with the fast solver used
inside experiments and exactly with CVXPY, and print both values of ``s*``, the
fast solver's excess over the reference and the CPU seconds of each, as a
Markdown table for ``benchmarks/RESULTS.md``. Needs CVXPY (the ``structured``
extra).

Usage::

    python scripts/program_gap.py [--instances ../shared/instances/public.json]
        [--only arena-20,bt-linear-10] [--gamma 1e-6]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from llmpo.stats import design  # noqa: E402
from llmpo.stats.instances import load_instances  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", default="../shared/instances/public.json")
    parser.add_argument("--only", default="", help="comma-separated names")
    parser.add_argument("--gamma", type=float, default=1e-6)
    args = parser.parse_args()
    wanted = {name for name in args.only.split(",") if name}
    print("| instance | K | d | fast s* | CVXPY s* | fast − CVXPY | fast s | CVXPY s |")
    print("|---|---|---|---|---|---|---|---|")
    for instance in load_instances(args.instances):
        if instance.features is None or (wanted and instance.name not in wanted):
            continue
        inputs = design.program_inputs(instance.features, instance.theta)
        started = time.process_time()
        fast, _ = design.solve_program(*inputs, gamma=args.gamma)
        fast_seconds = time.process_time() - started
        started = time.process_time()
        exact, _ = design.solve_program_reference(*inputs, gamma=args.gamma)
        exact_seconds = time.process_time() - started
        k, d = instance.features.shape
        print(
            f"| {instance.name} | {k} | {d} | {fast:,.3f} | {exact:,.3f} | "
            f"{100.0 * (fast - exact) / exact:+.4f}% | {fast_seconds:.1f} | "
            f"{exact_seconds:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
