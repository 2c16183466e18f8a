"""``python -m benchmarks.rating``: see the package's docstring (benchmarks/rating/__init__.py)."""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from benchmarks import rating
from benchmarks.common import machine_info, recreate_database, write_results
from benchmarks.rating import report
from benchmarks.rating.fixtures import (
    build_campaign,
    build_history,
    drop_history,
    environment,
    reset_campaign,
)
from benchmarks.rating.in_process import framework_floor, sql_per_call
from benchmarks.rating.load import (
    answer_only,
    floor_cycle,
    join_raters,
    run_load,
    session_judgment,
)
from benchmarks.rating.postgres import round_trip_cpu
from benchmarks.rating.runs import measure, sweep
from benchmarks.rating.servers import Server, ServerConfig, configurations


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rating",
                                     description=rating.__doc__.splitlines()[0])
    parser.add_argument("--raters", type=int, default=200)
    parser.add_argument("--pace", type=float, default=2.0, help="seconds per judgment, paced")
    parser.add_argument("--paced-s", type=float, default=60)
    parser.add_argument("--compare-s", type=float, default=10,
                        help="paced run against gunicorn's default, for the comparison")
    parser.add_argument("--capacity", default="10,25,50",
                        help="paced rater counts tried on the chosen server (p95 < 50 ms?)")
    parser.add_argument("--capacity-s", type=float, default=8)
    parser.add_argument("--sat-raters", type=int, default=32)
    parser.add_argument("--sat-s", type=float, default=20)
    parser.add_argument("--sat-rounds", type=int, default=3,
                        help="saturation runs; the median one is reported")
    parser.add_argument("--sweep", action="store_true",
                        help="compare runserver and gunicorn configurations first and measure "
                             "the fastest (otherwise gunicorn's gevent workers with DB_POOL=1)")
    parser.add_argument("--sweep-s", type=float, default=4, help="with --sweep")
    parser.add_argument("--sweep-rounds", type=int, default=2, help="with --sweep")
    parser.add_argument("--floor-s", type=float, default=8,
                        help="saturation against a view that only reads the user")
    parser.add_argument("--episodes", type=int, default=120)
    parser.add_argument("--items", type=int, default=3360)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="short runs, a smoke test (results go to the temporary folder)")
    args = parser.parse_args()
    if args.quick:
        args.paced_s, args.compare_s, args.sat_s, args.sweep_s, args.capacity_s = 8, 4, 6, 2, 3
        args.sat_rounds = 1
        args.sweep_rounds = 1
        args.floor_s = 3
        args.episodes, args.items, args.capacity = 80, 2000, "25"
    return args


def main() -> None:
    args = parse_args()
    warmup = 2.0
    t_all = time.perf_counter()
    cpus = len(os.sched_getaffinity(0))
    configs = configurations(cpus)
    default = configs["gunicorn-default"]

    with tempfile.TemporaryDirectory(prefix="bench-rating-") as tmp:
        env = environment(str(Path(tmp) / "media"))
        logs = Path(tmp)
        print(f"rating: database {env['DATABASE_URL']}, {cpus} CPUs "
              f"(load average {os.getloadavg()[0]:.1f})")
        recreate_database(env["DATABASE_URL"])
        import django

        django.setup()
        from django.conf import settings
        from django.core.management import call_command
        from django.db import connection

        import annotation.services.scheduling as scheduling

        t0 = time.perf_counter()
        call_command("migrate", verbosity=0)
        migrate_s = time.perf_counter() - t0
        sizes = build_campaign(episodes=args.episodes, items=args.items, seed=args.seed)
        invite = sizes.pop("invite")
        sizes["migrate_s"] = round(migrate_s, 1)
        print(f"  {sizes['episodes']} episodes, {sizes['items']} items (+{sizes['gold_items']} "
              f"gold, {sizes['catch_items']} catch), overlap {sizes['overlap']}; set up in "
              f"{migrate_s + sizes['corpus_s'] + sizes['campaign_s']:.0f} s")
        connection.close()

        # Raters join once, through gunicorn; their sessions serve every later server.
        with Server(configs[f"gunicorn-sync-{cpus + 1}"], env, logs) as server:
            t0 = time.perf_counter()
            raters = asyncio.run(join_raters(server.base, invite,
                                             max(args.raters, args.sat_raters), args.seed))
            sizes["join_s"] = round(time.perf_counter() - t0, 1)
        sizes.update(build_history(seed=args.seed))
        print(f"  an earlier round: {sizes['earlier_round_judgments']} judgments in another "
              f"campaign ({sizes['earlier_round_s']:.0f} s)")

        sweep_runs: list[dict] = []
        sweep_mean = None
        best = configs[f"gunicorn-gevent-{cpus}"]
        if args.sweep:
            sweep_runs, sweep_mean, best = sweep(
                list(configs.values()), env, logs, raters[: args.sat_raters],
                duration=args.sweep_s, rounds=args.sweep_rounds)

        def run(config: ServerConfig, n: int, label: str, duration: float, pace: float,
                **kw) -> dict:
            return measure(config, env, logs, raters[:n], label=f"{label}, {config.name}",
                           duration=duration, pace=pace, warmup=warmup, **kw)

        print(f"\nmeasured in full on {best.name}: (a) {args.raters} raters, one judgment "
              f"every {args.pace:g} s, {args.paced_s:.0f} s; (b) {args.sat_raters} raters, "
              f"no think time, {args.sat_s:.0f} s")
        report.print_header()
        paced = run(best, args.raters, "(a) paced", args.paced_s, args.pace)
        # This machine's speed drifts: (b) is measured in rounds and the median round counts.
        sat_runs = [run(best, args.sat_raters, f"(b) saturation {k + 1}/{args.sat_rounds}",
                        args.sat_s, 0)
                    for k in range(args.sat_rounds)]
        saturation = sorted(sat_runs, key=lambda r: r["judgments_per_s"])[len(sat_runs) // 2]
        answers = run(best, args.sat_raters, "(b) answers only", args.floor_s, 0,
                      cycle=answer_only)
        with Server(best, env, logs) as server:  # the same load on a do-nothing view
            floor_http = run_load(server, raters[: args.sat_raters],
                                  label=f"(b) floor: do-nothing view, {best.name}",
                                  duration=args.floor_s, pace=0, warmup=warmup,
                                  cycle=floor_cycle)
        report.print_run(floor_http)
        # The same raters answered by the REST views alone (the fast path switched off).
        rest = ServerConfig(f"{best.name}-rest-views", best.kind, best.workers, best.threads,
                            note="RATING_FAST_PATH=0", env={"RATING_FAST_PATH": "0"})
        rest_views = measure(rest, env, logs, raters[: args.sat_raters],
                             label=f"(b) REST views, fast path off, {best.name}",
                             duration=args.floor_s, pace=0, warmup=warmup)
        # What a client gets that signs in with the session and asks for each next item.
        session = run(best, args.sat_raters, "(b) session, 3 calls", args.floor_s, 0,
                      cycle=session_judgment)
        paced_default = run(default, args.raters, "(a) paced", args.compare_s, args.pace)
        capacity = [run(best, n, f"paced, {n} raters", args.capacity_s, args.pace)
                    for n in [int(x) for x in args.capacity.split(",") if x] if n < args.raters]

        # The same load on the tables of a new install: no earlier round (measured last).
        drop_history()
        new_install = run(best, args.sat_raters, "(b) new install's tables", args.sat_s, 0)

        reset_campaign()
        sql = sql_per_call()
        floor = framework_floor()
        round_trip = round_trip_cpu()
        server_settings = {
            "session_engine": settings.SESSION_ENGINE,
            "conn_max_age": settings.DATABASES["default"].get("CONN_MAX_AGE"),
            "middleware": settings.MIDDLEWARE,
            "rating_fast_path": settings.RATING_FAST_PATH,
            "prefetch": scheduling.PREFETCH,
        }
        connection.close()

    met = [r["raters"] for r in capacity if report.meets_p95(r) and r["error_count"] == 0]
    inputs = {**sizes, "raters": args.raters, "pace_s": args.pace, "paced_s": args.paced_s,
              "sat_raters": args.sat_raters, "sat_s": args.sat_s, "sat_rounds": args.sat_rounds}
    if args.sweep:
        inputs |= {"sweep_s": args.sweep_s, "sweep_rounds": args.sweep_rounds}
    inputs |= {"compare_s": args.compare_s, "capacity_s": args.capacity_s, "warmup_s": warmup,
               "seed": args.seed,
               "load_generator": "asyncio streams in this process (hand-written HTTP/1.1, one "
                                 "kept-alive connection and one rater token per rater, as the "
                                 "rate page), on this machine"}
    result = {
        "benchmark": "rating",
        "machine": machine_info(database="postgresql"),
        "inputs": inputs,
        "server_settings": server_settings,
        "chosen_server": best.name,
        "paced": paced,
        "saturation": saturation,
        "paced_default": paced_default,
        "saturation_rounds_judgments_per_s": [r["judgments_per_s"] for r in sat_runs],
        "saturation_answers_only": answers,
        "floor_http": floor_http,
        "saturation_rest_views": rest_views,
        "saturation_new_install_tables": new_install,
        "session_three_calls": session,
        "paced_capacity": capacity,
        "largest_paced_raters_meeting_p95": max(met) if met else None,
    }
    if args.sweep:
        result |= {"sweep_mean_judgments_per_s": sweep_mean, "sweep": sweep_runs}
    result |= {
        "comparison": report.comparison(
            best=best.name, default=default.name, sweep_mean=sweep_mean, saturation=saturation,
            rest_views=rest_views, new_install=new_install, session=session, paced=paced,
            paced_default=paced_default),
        "sql_per_call": sql,
        "framework_floor_ms": floor,
        "round_trip_cpu_ms": round_trip,
        "where_the_time_goes": report.where_the_time_goes(saturation, sql, floor, floor_http),
        "goals": report.goals(paced=paced, saturation=saturation, answers=answers,
                              runs=[*sweep_runs, paced, *sat_runs, answers, rest_views, session,
                                    new_install, paced_default, *capacity],
                              goal_runs=[paced, *sat_runs]),
        "goal": "(a) p95 < 50 ms on every endpoint at 200 raters x 1 judgment / 2 s; "
                "(b) > 300 judgments/s at saturation; zero errors (409/410 counted apart)",
        "total_s": round(time.perf_counter() - t_all, 1),
    }
    # A smoke test does not replace the measured figures.
    out = write_results("rating", result, Path(tempfile.gettempdir()) / "rating-quick.json"
                        if args.quick else None)
    report.print_summary(result, out)


if __name__ == "__main__":
    main()
