"""The figures drawn from the runs (comparisons, goals, where the time goes) and the table and
summary printed."""

from __future__ import annotations

from benchmarks.rating.load import ENDPOINTS


def where_the_time_goes(run: dict, sql: dict, floor: dict, floor_http: dict) -> dict:
    """Per judgment (a heartbeat and an answer, and the odd next): CPU of each party, and the
    split of the server's time into SQL, the framework and the rest of the view."""
    per_j = 1000 / max(run["judgments_per_s"], 1e-9)
    cpu = run["cpu"]
    ep = run["endpoints"]
    # Calls of each kind per judgment, from the run itself.
    per = {e: ep[e]["requests"] / max(run["judgments_per_s"] * run["window_s"], 1e-9)
           for e in ENDPOINTS}
    server_ms = sum((ep[e]["server_mean_ms"] or 0) * per[e] for e in ENDPOINTS)
    sql_ms = sum((ep[e]["sql_mean_ms"] or 0) * per[e] for e in ENDPOINTS)
    requests = sum(per.values())
    return {
        "requests_per_judgment": {e: round(v, 3) for e, v in per.items()},
        "cpu_ms_per_judgment": {
            "server (gunicorn workers)": round(cpu["server"] * per_j, 1),
            "postgresql": round(cpu["postgres"] * per_j, 1),
            "load generator": round(cpu["load_generator"] * per_j, 1),
            "other processes on the machine": round(cpu["other_processes"] * per_j, 1),
        },
        "server_ms_per_judgment": {
            "in the application (worker wall time)": round(server_ms, 1),
            "of which SQL statements (wall)": round(sql_ms, 1),
            "framework floor x requests (in process, idle machine)": round(
                requests * floor["drf_rater_token_ms"], 1),
        },
        "statements_per_call": {e: sql[e]["statements_mean"] for e in ENDPOINTS},
        "postgresql_reads_per_judgment": run["postgresql_reads_per_judgment"],
        "stack_alone_judgments_per_s": floor_http["judgments_per_s"],
        "stack_alone_server_cpu_ms_per_judgment": round(
            floor_http["cpu"]["server"] * 1000 / max(floor_http["judgments_per_s"], 1e-9), 1),
        "note": "server CPU per judgment over the framework floor x requests is the work of the "
                "views; wall time in the worker above its CPU is waiting for PostgreSQL and for "
                "a core",
    }


def print_run(r: dict) -> None:
    ep = r["endpoints"]
    cells = "  ".join(f"{ep[e]['p50_ms']:6.1f} {ep[e]['p95_ms']:7.1f} {ep[e]['p99_ms']:7.1f}"
                      for e in ENDPOINTS)
    print(f"  {r['label']:<36} {r['raters']:>4} {r['judgments_per_s']:7.1f} "
          f"{r['error_count']:>6}   {cells}")


def print_header() -> None:
    cols = "  ".join(f"{e + ' p50/p95/p99 ms':>22}" for e in ENDPOINTS)
    print(f"  {'run':<36} {'n':>4} {'judg/s':>7} {'errors':>6}   {cols}")


def meets_p95(run: dict) -> bool:
    return all(run["endpoints"][e]["p95_ms"] < 50 for e in ENDPOINTS)


def comparison(*, best: str, default: str, sweep_mean: dict[str, float] | None,
               saturation: dict, rest_views: dict, new_install: dict, session: dict,
               paced: dict, paced_default: dict) -> dict:
    """Ratios between the runs (the sweep's only where it ran)."""
    out = {} if sweep_mean is None else {
        f"saturation_{best}_vs_{name}": round(sweep_mean[best] / max(sweep_mean[name], 1e-9), 2)
        for name in ("runserver", "gunicorn-default")
    }
    out["saturation_fast_path_vs_rest_views"] = round(
        saturation["judgments_per_s"] / max(rest_views["judgments_per_s"], 1e-9), 2)
    out["saturation_vs_new_install_tables"] = round(
        saturation["judgments_per_s"] / max(new_install["judgments_per_s"], 1e-9), 2)
    out["saturation_rate_page_protocol_vs_session_3_calls"] = round(
        saturation["judgments_per_s"] / max(session["judgments_per_s"], 1e-9), 2)
    out[f"paced_p95_{default}_over_{best}"] = {
        e: round(paced_default["endpoints"][e]["p95_ms"]
                 / max(paced["endpoints"][e]["p95_ms"], 1e-9), 2) for e in ENDPOINTS}
    out[f"paced_judgments_per_s_{best}_vs_{default}"] = (
        round(paced["judgments_per_s"] / paced_default["judgments_per_s"], 2)
        if paced_default["judgments_per_s"] else None)
    return out


def goals(*, paced: dict, saturation: dict, answers: dict, runs: list[dict],
          goal_runs: list[dict]) -> dict:
    """The goals, and the campaign's invariants over every run (``runs``); zero errors over
    every run the goals are read from (``goal_runs``: the paced run and every saturation
    round, not only the median one)."""
    checks = [r["check"] for r in runs]
    return {
        "a_paced_p95_under_50ms_every_endpoint": meets_p95(paced),
        "b_saturation_over_300_judgments_per_s": saturation["judgments_per_s"] > 300,
        # Not the goal's measure (it keeps one heartbeat per item): the page's own calls when
        # items are answered faster than the heartbeat interval.
        "b_answers_only_over_300_judgments_per_s": answers["judgments_per_s"] > 300,
        "zero_errors": all(r["error_count"] == 0 for r in goal_runs),
        "overlap_never_exceeded": all(c["items_over_overlap"] == 0 for c in checks),
        "counts_agree": all(c["items_count_mismatch"] == 0
                            and c["submitted_without_judgment"] == 0 for c in checks),
    }


def print_summary(result: dict, out: object) -> None:
    wt = result["where_the_time_goes"]
    sql, floor = result["sql_per_call"], result["framework_floor_ms"]
    round_trip, floor_http = result["round_trip_cpu_ms"], result["floor_http"]
    print("\nwhere the time goes, per judgment at saturation (CPU ms): "
          + ", ".join(f"{k} {v}" for k, v in wt["cpu_ms_per_judgment"].items()))
    print("  SQL statements per call: "
          + ", ".join(f"{e} {sql[e]['statements_mean']:g}" for e in ENDPOINTS)
          + "; in process, alone: "
          + ", ".join(f"{e} {sql[e]['in_process_p50_ms']:g} ms" for e in ENDPOINTS))
    print("  PostgreSQL's work per judgment: " + ", ".join(
        f"{k} {v:g}" for k, v in wt["postgresql_reads_per_judgment"].items()))
    print(f"  a database round trip (SELECT 1) costs {round_trip['postgresql_cpu_ms']} ms of "
          f"PostgreSQL CPU and {round_trip['client_cpu_ms']} ms in the client")
    print(f"  a rating call that does nothing costs {floor['drf_rater_token_ms']} ms in process "
          f"(with the session instead of the token {floor['drf_signed_in_ms']} ms, anonymous "
          f"plain Django {floor['django_anonymous_ms']} ms); two of them per judgment, "
          f"through {result['chosen_server']}: {floor_http['judgments_per_s']} 'judgments'/s "
          f"at most")
    print("comparison: " + ", ".join(f"{k} {v}x" for k, v in result["comparison"].items()
                                     if not isinstance(v, dict)))
    print(f"goals: {result['goals']}")
    print(f"largest paced rater count with p95 < 50 ms: "
          f"{result['largest_paced_raters_meeting_p95']}; {result['total_s']:.0f} s in all")
    print(f"  -> {out}")
