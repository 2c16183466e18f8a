"""One measured run, each from the same state, and the sweep over server configurations."""

from __future__ import annotations

from pathlib import Path

from benchmarks.rating.fixtures import campaign_check, reset_campaign
from benchmarks.rating.load import RaterSession, one_judgment, run_load
from benchmarks.rating.postgres import postgresql_reads, reads_per_judgment
from benchmarks.rating.report import print_header, print_run
from benchmarks.rating.servers import Server, ServerConfig


def measure(config: ServerConfig, env: dict, logs: Path, raters: list[RaterSession], *,
             label: str, duration: float, pace: float, warmup: float,
             cycle=one_judgment) -> dict:
    """A load run on a fresh server from the campaign's starting state, with PostgreSQL's reads
    per judgment and the campaign's check afterwards."""
    reset_campaign()
    before = postgresql_reads()
    with Server(config, env, logs) as server:
        run = run_load(server, raters, label=label, duration=duration, pace=pace,
                       warmup=warmup, cycle=cycle)
    # (read once the server's connections are closed: a backend reports its counts on exit)
    after = postgresql_reads()
    run["check"] = campaign_check()
    # Every judgment of the run, warm-up included, as the counts are.
    run["postgresql_reads_per_judgment"] = reads_per_judgment(before, after,
                                                              run["check"]["judgments"])
    print_run(run)
    return run



def sweep(configs: list[ServerConfig], env: dict, logs: Path, raters: list[RaterSession], *,
          duration: float, rounds: int) -> tuple[list[dict], dict[str, float], ServerConfig]:
    """Short saturation runs of every configuration, taking turns round after round (this
    machine's speed drifts by tens of percent within minutes, so they are compared by their
    mean). Returns the runs, the mean judgments/s of each configuration and the fastest tuned
    one without errors (runserver and gunicorn's default are only compared with)."""
    print(f"\nsweep: {len(raters)} raters with no think time, {duration:g} s per run, "
          f"{rounds} rounds taking turns")
    print_header()
    runs = [measure(c, env, logs, raters, label=c.name, duration=duration, pace=0, warmup=1.5)
            for _ in range(rounds) for c in configs]
    mean = {c.name: round(sum(r["judgments_per_s"] for r in runs
                              if r["server"] == c.name) / rounds, 1)
            for c in configs}
    print("  mean judgments/s: " + ", ".join(f"{k} {v}" for k, v in mean.items()))
    clean = {r["server"] for r in runs} - {r["server"] for r in runs if r["error_count"]}
    tuned = [n for n in mean if n not in ("runserver", "gunicorn-default")
             and n in clean] or list(mean)
    by_name = {c.name: c for c in configs}
    return runs, mean, by_name[max(tuned, key=mean.get)]
