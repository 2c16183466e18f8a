"""``python -m benchmarks.feedback [--quick]``: each part measures itself on this machine in the
same run and the figures go to ``benchmarks/results/feedback.json``."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine_info, write_results

# Goals (issue: preference data researchers can trust).
GOALS = {
    "bt_fit_s": 1.0,
    "bt_ties_fit_s": 1.0,
    "bootstrap_s": 30.0,
    "qc_s": 10.0,
    "export_s": 30.0,
    "export_peak_rss_mb": 500.0,
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.feedback", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="small inputs, results to a temporary file (a smoke test)")
    # The export first: its peak memory is read from its own process, which starts as a copy of
    # this one (fork), so it must start before the other parts have grown this process (choix
    # alone takes 2.5 GB).
    parser.add_argument("--parts", default="export,ratings,qc",
                        help="comma-separated: export, ratings, qc")
    args = parser.parse_args()
    from benchmarks.feedback import export, qc, ratings

    parts = {"ratings": ratings, "qc": qc, "export": export}
    result: dict = {"benchmark": "feedback", "machine": machine_info(), "quick": args.quick}
    t0 = time.perf_counter()
    for name in args.parts.split(","):
        print(f"== {name}", flush=True)
        figures = parts[name].measure(quick=args.quick)
        for key, value in figures.items():
            print(f"  {key}: {value}")
        result.update(figures)
    result["goals"] = {f"{key}_under_{limit:g}": result[key] < limit
                       for key, limit in GOALS.items() if key in result}
    if "bt_loglik" in result and "choix_loglik" in result:
        # per judgment, on the same decisive judgments (tolerance: float noise of the sums)
        result["goals"]["bt_loglik_no_worse_than_choix"] = (
            result["bt_loglik"] >= result["choix_loglik"] - 1e-6 * abs(result["choix_loglik"]))
    result["total_s"] = round(time.perf_counter() - t0, 1)
    print("goals:", result["goals"])
    out = write_results("feedback", result, Path(tempfile.gettempdir()) / "feedback-quick.json"
                        if args.quick else None)
    print("  ->", out)


if __name__ == "__main__":
    main()
