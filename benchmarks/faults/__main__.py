"""``python -m benchmarks.faults``: see the package's docstring (benchmarks/faults/__init__.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import faults
from benchmarks.common import machine_info, recreate_database, write_results
from benchmarks.faults.injection import GRACE_S, Fault, Platform, schedule
from benchmarks.faults.stack import PrivatePostgres, PrivateRedis, beat, worker
from benchmarks.faults.traffic import Ledger, rater_loop, raters_rng

PG_PORT, REDIS_PORT = 55432, 56379
OVERLAP = 8  # raters per item: fewer episodes for the same number of answers
# Answers per second the raters are paced at when no --duration is given: 100,000 answers in
# 1,000 s. The stack held this pace on two shared cores through every fault, the faults' own
# work (a render, a round's training) and the catching up after each (results/faults.json).
DEFAULT_RATE = 100.0
# A fault falls "while answers flow" when answers were acknowledged in the seconds before it.
FLOW_S = 5.0
QUICK_DURATION_S = 300.0
# Regular items per answer sent, over the overlap: room for the answers sent after the target
# while the last fault is recovered from (a quick run's slices are short next to a round).
ITEM_MARGIN, QUICK_ITEM_MARGIN = 1.3, 2.5


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults",
                                     description=faults.__doc__.splitlines()[0])
    parser.add_argument("--submissions", type=int, default=100_000,
                        help="answers to send (the run goes on until they are sent and every "
                             "fault is over)")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds the load lasts: the raters are paced to send the answers "
                             f"in it, each fault is due in its own fifth of it (default: "
                             f"submissions / {DEFAULT_RATE:.0f}, at least {QUICK_DURATION_S:.0f};"
                             f" --quick: {QUICK_DURATION_S:.0f})")
    parser.add_argument("--raters", type=int, default=200)
    parser.add_argument("--drop", type=float, default=0.1,
                        help="share of answers whose reply is dropped and the answer resent")
    parser.add_argument("--max-s", type=float, default=None,
                        help="the load stops after this many seconds whatever happened "
                             "(default: the duration + 900)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="a small run with every fault, a smoke test (faults-quick.json)")
    args = parser.parse_args()
    if args.quick:
        args.submissions = min(args.submissions, 4000)
        args.raters = min(args.raters, 50)
    if args.duration is None:
        args.duration = (QUICK_DURATION_S if args.quick
                         else max(QUICK_DURATION_S, args.submissions / DEFAULT_RATE))
    if args.max_s is None:
        args.max_s = args.duration + 900
    return args


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _environment(tmp: Path, pg: PrivatePostgres, redis: PrivateRedis) -> dict[str, str]:
    from benchmarks.rating.fixtures import environment

    env = environment(str(tmp / "media"))
    env |= {
        "DATABASE_URL": pg.url,
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{redis.port}/0",
        "CACHE_URL": f"redis://127.0.0.1:{redis.port}/1",  # as the compose file
        "PYOPENGL_PLATFORM": "osmesa", "RENDER_GL_PLATFORM": "osmesa",
        "LP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
        # Scaled to this run's tasks (a render of seconds, steps that beat every 2 s), so that
        # the reapers act within the run; the defaults are for renders of up to 30 minutes.
        # A clip heartbeats at least every 10 s; a round's step every few seconds, but slower
        # when the two cores are busy with the web (15 s requeued live steps under load).
        "CLIP_SILENT_S": "15", "CLIP_REAP_EVERY_S": "5",
        "ROUND_STEP_STALE_S": "60", "ROUND_REAP_EVERY_S": "5",
        # The simulated raters answer at random, probes included: quality control still runs
        # (its beat job is part of the load) but excludes no one, or they would be served
        # nothing more within minutes.
        "FEEDBACK_QC": json.dumps({"gold_accuracy_exclude": 0, "catch_accuracy_exclude": 0,
                                   "reliability_exclude": 0}),
        # Every simulated rater joins from 127.0.0.1 through one link: no throttle (0).
        "INVITE_MAX_ACCOUNTS_PER_ADDRESS": "0",
        "INVITE_MAX_ACCOUNTS_PER_LINK_PER_WINDOW": "0",
    }
    os.environ.update(env)
    return env


async def _traffic(base: str, raters: list, ledger: Ledger, target: int, duration: float,
                   injector: threading.Thread, max_s: float, plan: list[Fault]) -> None:
    """Until the target is sent, the duration is over and every fault is over (or ``max_s``)."""
    stop = asyncio.Event()
    interval = len(raters) * duration / target  # seconds between one rater's answers
    tasks = [asyncio.create_task(rater_loop(r, ledger, stop, base, interval)) for r in raters]
    t0 = time.monotonic()
    last = -1
    while True:
        await asyncio.sleep(0.5)
        done = sum(f.injected_s is not None for f in plan)
        elapsed = time.monotonic() - t0
        if int(elapsed) // 2 != last:
            last = int(elapsed) // 2
            print(f"\r  {elapsed:6.0f} s  submissions {ledger.submissions:>7,}/{target:,}  "
                  f"acknowledged {len(ledger.acknowledged):>7,}  resent {ledger.resent:>5,}  "
                  f"5xx {sum(1 for f in ledger.failures if f[2] >= 500):>3}  "
                  f"no reply {sum(1 for f in ledger.failures if f[2] == 0):>3}  "
                  f"faults {done}/{len(plan)}", end="", flush=True)
        if ((ledger.submissions >= target and elapsed >= duration and not injector.is_alive())
                or elapsed > max_s or all(t.done() for t in tasks)):
            break
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    print()


def _inject_all(platform: Platform, plan: list[Fault], errors: list) -> None:
    for fault in plan:
        while platform.ledger.now() < fault.due_s:
            time.sleep(0.05)
        try:
            platform.inject(fault)
        except Exception as exc:  # noqa: BLE001 - recorded with the fault
            fault.detail["error"] = repr(exc)
            errors.append(repr(exc))
        print(f"\n  {fault.kind}: recovered in "
              + (f"{fault.recovered_s:.1f} s" if fault.recovered_s is not None else "-- (not)"),
              flush=True)


def _count(ledger: Ledger) -> dict:
    """What the database holds against what the raters were told."""
    from django.db import connection
    from django.db.models import Count

    from annotation.models import Campaign, Judgment
    from benchmarks.rating.fixtures import SLUG, campaign_check

    campaign = Campaign.objects.get(slug=SLUG)
    stored_keys = {str(k) for k in Judgment.objects.filter(campaign=campaign)
                   .values_list("idempotency_key", flat=True)}
    acked = set(ledger.acknowledged)
    dup_keys = (Judgment.objects.values("idempotency_key").annotate(n=Count("id"))
                .filter(n__gt=1).count())
    dup_leases = (Judgment.objects.filter(campaign=campaign).values("assignment_id")
                  .annotate(n=Count("id")).filter(n__gt=1).count())
    check = campaign_check()
    connection.close()
    return {
        "stored": len(stored_keys),
        "lost": len(acked - stored_keys),
        "duplicated": dup_keys + dup_leases,
        "over_overlap": check["items_over_overlap"],
        "detail": {
            "acknowledged": len(acked),
            "refused": _by_status(ledger.refused),
            "refused_but_stored": len(set(ledger.refused) & stored_keys),
            "abandoned": len(ledger.abandoned),
            "abandoned_but_stored": len(set(ledger.abandoned) & stored_keys),
            "stored_never_acknowledged": len(stored_keys - acked),
            "same_key_stored_twice": dup_keys,
            "same_lease_answered_twice": dup_leases,
            "items_count_mismatch": check["items_count_mismatch"],
            "submitted_without_judgment": check["submitted_without_judgment"],
        },
    }


def _by_status(refused: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for status in refused.values():
        out[str(status)] = out.get(str(status), 0) + 1
    return out


def _failures(ledger: Ledger, plan: list[Fault]) -> dict:
    windows = [(f.kind, f.injected_s, (f.window_end_s or f.injected_s) + GRACE_S)
               for f in plan if f.injected_s is not None]

    def where(t: float) -> str | None:
        return next((k for k, a, b in windows if a <= t <= b), None)

    five = [{"t_s": t, "endpoint": e, "status": s, "fault": where(t)}
            for t, e, s in ledger.failures if s >= 500]
    none = [{"t_s": t, "endpoint": e, "fault": where(t)} for t, e, s in ledger.failures if s == 0]
    return {"http_5xx": len(five),
            "http_5xx_outside_fault_windows": [x for x in five if x["fault"] is None],
            "http_5xx_each": five,
            "no_reply": len(none),
            "no_reply_outside_fault_windows": [x for x in none if x["fault"] is None]}


def main() -> None:  # noqa: PLR0915 - one straight run
    args = parse_args()
    t_all = time.perf_counter()
    for port in (PG_PORT, REDIS_PORT):
        if not _port_free(port):
            raise SystemExit(f"127.0.0.1:{port} is taken: this benchmark starts its own "
                             "PostgreSQL and Redis there (stop the earlier run first)")
    # Room for the answers sent while the last faults are still being recovered from: a short
    # run outlasts its target by the faults' own time.
    items = math.ceil(args.submissions * (QUICK_ITEM_MARGIN if args.quick else ITEM_MARGIN)
                      / OVERLAP)
    episodes = max(40, math.ceil(items / 28) + 4)
    plan = schedule(args.seed, args.duration)
    tmp = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    pg, redis = PrivatePostgres(tmp, PG_PORT), PrivateRedis(tmp, REDIS_PORT)
    procs = []
    try:
        pg.start()
        redis.start()
        env = _environment(tmp, pg, redis)
        print(f"faults: PostgreSQL on :{PG_PORT}, Redis on :{REDIS_PORT} (in {tmp}); "
              f"{args.raters} raters, {args.submissions:,} answers in {args.duration:.0f} s, "
              f"{args.drop:.0%} of replies dropped; faults in this order: "
              + ", ".join(f"{f.kind} (due {f.due_s:.0f} s)" for f in plan))
        recreate_database(pg.url)
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connection

        import rendering.services
        from benchmarks.faults.workload import prepare_round
        from benchmarks.rating.fixtures import analyze, build_campaign
        from benchmarks.rating.load import join_raters
        from benchmarks.rating.servers import Server, ServerConfig

        t0 = time.perf_counter()
        call_command("migrate", verbosity=0)
        enqueue = rendering.services._enqueue
        sizes = build_campaign(episodes=episodes, items=items, seed=args.seed, overlap=OVERLAP)
        invite = sizes.pop("invite")
        sizes |= prepare_round(seed=args.seed)
        rendering.services._enqueue = enqueue  # the renders from here on are real
        connection.close()
        print(f"  {sizes['episodes']} episodes, {sizes['items']} items, overlap "
              f"{sizes['overlap']}; a tiny policy and a round's campaign; set up in "
              f"{time.perf_counter() - t0:.0f} s")

        # gunicorn as the Dockerfile runs it: gthread, 4 workers x 8 threads.
        config = ServerConfig("gunicorn-gthread-4x8", "gthread", 4, 8,
                              note="the Dockerfile's command")
        with Server(config, env, tmp) as server:
            raters = asyncio.run(join_raters(server.base, invite, args.raters, args.seed))
            raters_rng(raters, args.seed)
            w, b = worker(env, tmp), beat(env, tmp)
            procs += [w, b]
            w.start()
            b.start()
            from config.celery import app

            deadline = time.monotonic() + 120
            while not app.control.ping(timeout=1.0) and time.monotonic() < deadline:
                pass
            ledger = Ledger(drop_share=args.drop)  # its clock: the load's
            platform = Platform(ledger=ledger, postgres=pg, redis=redis, worker=w,
                                gunicorn_pid=server.proc.pid, gunicorn_workers=config.workers,
                                round_slug=sizes["round_campaign"], seed=args.seed)
            errors: list[str] = []
            injector = threading.Thread(target=_inject_all,
                                        args=(platform, plan, errors),
                                        daemon=True)
            threading.Timer(5.0, analyze).start()  # planner statistics of a campaign at work
            injector.start()
            t_load = time.perf_counter()
            asyncio.run(_traffic(server.base, raters, ledger, args.submissions, args.duration,
                                 injector, args.max_s, plan))
            load_s = time.perf_counter() - t_load
            injector.join(timeout=5)
        counts = _count(ledger)
        failures = _failures(ledger, plan)
        from django.conf import settings

        server_settings = {
            "conn_max_age": settings.DATABASES["default"].get("CONN_MAX_AGE"),
            "conn_health_checks": settings.DATABASES["default"].get("CONN_HEALTH_CHECKS"),
            "celery_task_acks_late": settings.CELERY_TASK_ACKS_LATE,
            "celery_task_reject_on_worker_lost": settings.CELERY_TASK_REJECT_ON_WORKER_LOST,
            "celery_visibility_timeout_s":
                settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout"),
            "longest_task_time_limit_s": _longest_task_limit(),
            "clip_silent_s": settings.CLIP_SILENT_S,
            "clip_reap_every_s": settings.CELERY_BEAT_SCHEDULE["requeue-stale-clips"]["schedule"],
            "round_step_stale_s": settings.ROUND_STEP_STALE_S,
            "lease_max_age_s": settings.LEASE_MAX_AGE_S,
            "feedback_qc_exclude": {k: v for k, v in settings.FEEDBACK_QC.items()
                                    if k.endswith("_exclude")},
            "invite_max_accounts_per_address": settings.INVITE_MAX_ACCOUNTS_PER_ADDRESS,
            "invite_max_accounts_per_link_per_window":
                settings.INVITE_MAX_ACCOUNTS_PER_LINK_PER_WINDOW,
        }
        connection.close()
    finally:
        for p in procs:
            p.stop()
        redis.stop()
        with contextlib.suppress(subprocess.CalledProcessError):  # down already
            pg.stop()

    flow = "answers_acknowledged_5_s_before"
    for f in plan:  # the answers acknowledged in the seconds before each fault
        if f.injected_s is not None:
            f.detail[flow] = ledger.answers_between(f.injected_s - FLOW_S, f.injected_s)
    recovered = all(f.recovered_s is not None for f in plan)
    result = {
        "benchmark": "faults",
        "machine": machine_info(database="postgresql (private cluster)", broker="redis"),
        "inputs": {**sizes, "raters": args.raters, "drop_share": args.drop,
                   "duration_s": args.duration,
                   "paced_answers_per_s": round(args.submissions / args.duration, 1),
                   "seed": args.seed, "quick": args.quick,
                   "server": "gunicorn gthread, 4 workers x 8 threads (the Dockerfile's)",
                   "worker": "celery -Q default,render,gpu --concurrency 2, and celery beat",
                   "grace_s": GRACE_S, "target_submissions": args.submissions},
        "server_settings": server_settings,
        "submissions": ledger.submissions,
        "stored": counts["stored"],
        "lost": counts["lost"],
        "duplicated": counts["duplicated"],
        "over_overlap": counts["over_overlap"],
        "http_5xx": failures["http_5xx"],
        "faults": [f.as_dict() for f in plan],
        "counts": counts["detail"],
        "requests": ledger.requests,
        "dropped_replies": ledger.dropped_replies,
        "resent": ledger.resent,
        "next_states": ledger.states,
        "raters_stopped": ledger.stopped,
        "failures": failures,
        "load_s": round(load_s, 1),
        "answers_per_s": round(ledger.submissions / load_s, 1),
        "goals": {
            "nothing_lost_duplicated_or_over_overlap":
                counts["lost"] == counts["duplicated"] == counts["over_overlap"] == 0,
            "no_5xx_outside_fault_windows": not failures["http_5xx_outside_fault_windows"],
            "every_fault_recovered_without_a_person": recovered,
            "every_fault_while_answers_flow": all(f.detail.get(flow, 0) > 0 for f in plan),
            "no_rater_ran_out_of_items": not ledger.stopped,
            "celery_tasks_exactly_once": all(f.detail.get("exactly_once", True) for f in plan),
            "submissions_at_least_100000": ledger.submissions >= 100_000,
        },
        "injector_errors": errors,
        "total_s": round(time.perf_counter() - t_all, 1),
    }
    name = "faults-quick" if args.quick else "faults"
    out = write_results("faults", result, Path(faults.RESULTS_DIR) / f"{name}.json")
    _print_summary(result, out)
    shutil.rmtree(tmp, ignore_errors=True)


def _longest_task_limit() -> int:
    from config.celery import app

    app.loader.import_default_modules()
    return max(int(t.time_limit or 0) for t in app.tasks.values())


def _print_summary(r: dict, out: Path) -> None:
    print(f"\n{'submissions':<28}{r['submissions']:>10,}")
    for k in ("stored", "lost", "duplicated", "over_overlap", "http_5xx"):
        print(f"{k:<28}{r[k]:>10,}")
    print(f"{'5xx outside fault windows':<28}"
          f"{len(r['failures']['http_5xx_outside_fault_windows']):>10,}")
    print(f"{'answers per second':<28}{r['answers_per_s']:>10}")
    print(f"\n{'fault':<34}{'at s':>8}{'window s':>10}{'recovered s':>13}")
    for f in r["faults"]:
        rec = f"{f['recovered_s']:.1f}" if f["recovered_s"] is not None else "no"
        win = f"{f['window_s']:.1f}" if f["window_s"] is not None else "-"
        at = f"{f['injected_at_s']:.1f}" if f["injected_at_s"] is not None else "-"
        print(f"{f['kind']:<34}{at:>8}{win:>10}{rec:>13}")
    print("\ngoals: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in r["goals"].items()))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
