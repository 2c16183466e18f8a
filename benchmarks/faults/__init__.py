"""Faults under load: nothing lost, nothing duplicated, overlap kept, every fault recovered alone.

    python -m benchmarks.faults [--submissions 100000] [--duration S] [--raters 200]
                                [--drop 0.1] [--seed 0] [--quick]

Everything runs on this machine, traffic only to 127.0.0.1, for a bounded time:

1. Its own PostgreSQL cluster (``initdb`` in a temporary folder, port 55432, trust
   authentication) and its own Redis (port 56379, append-only file in the same folder, as the
   compose file runs Redis): the only ones it restarts. The project's migrations, a synthetic
   corpus and one large pairwise campaign (overlap 8, gold/catch/repeat probes; clips faked as
   rendered), a tiny policy (trained here on the CPU, promoted, lineage ``faults``) with a
   small answered campaign over its samples for a retraining round (``workload.py``).
2. gunicorn as the Dockerfile runs it (gthread, 4 workers x 8 threads, the project's WSGI
   application with the rating fast path), a Celery worker (``-Q default,render,gpu``, two
   processes) and Celery beat, all started by this benchmark (``stack.py``).
3. ``--raters`` raters join through the invite page (its throttles per address and per link
   off: every one comes from 127.0.0.1 through one link) and rate as the rate page does (next,
   a heartbeat now and then, the answer with an idempotency key; the reply carries the next
   items), paced so that together they send ``--submissions`` answers in ``--duration``
   seconds (default: 100 answers a second). The next call's state is followed: ``waiting``
   (items left, held by others) and ``cool_down`` mean ask again later, not finished. For
   ``--drop`` of the answers the reply is thrown away and the same answer (same key) sent
   again; an answer that got no reply or a 5xx is sent again with the same key until it is
   acknowledged or refused (``traffic.py``). They answer at random, so quality control runs
   with its exclusion thresholds at 0. The campaign has 1.3 times as many item places
   (items x overlap) as answers (2.5 in a quick run, whose slices are short next to a round).
4. Meanwhile each fault is injected once, due at a random moment (``--seed``) of the first
   half of its own fifth of the duration (a Celery fault: its work is started then, and the
   worker killed once that work is under way; a fault that falls due while the one before is
   still recovering waits for it, ``late_s``): kill -9 of one gunicorn worker; kill -9 of the
   Celery worker (its whole process group) in the middle of a render and, separately, in the
   middle of a round's optimisation step, the worker then started again as a supervisor
   would; an immediate stop and start of PostgreSQL; a restart of Redis (``injection.py``).
   Recovery is measured from the injection: to the first successful request after the
   fault's own action ended (web, database), to the broker answering the worker's ping again
   (Redis), to the interrupted task finishing (render: the clip stored; round: the killed step
   done, the round then followed to its end).
   Beat's reapers bring back what Redis would redeliver only after its visibility timeout
   (12 h); their thresholds are scaled here to this run's small tasks (``CLIP_SILENT_S`` 15 s,
   ``ROUND_STEP_STALE_S`` 60 s, checked every 5 s). The load ends once the duration is over,
   the answers are sent and every fault is over (``--max-s`` at the latest).
5. Afterwards, from the database: ``stored`` judgments; ``lost``, answers the raters saw
   acknowledged (at once or after resending) that are not stored; ``duplicated``, idempotency
   keys or leases stored twice; ``over_overlap``, items with more judgments than the overlap.
   Every 5xx is listed with its time and the fault whose window it fell in (or none); a
   window counts ``GRACE_S`` (1 s) longer for requests in flight when it ended.

Results: benchmarks/results/faults.json (``--quick``: faults-quick.json, about 6 minutes:
4,000 answers from 50 raters in 300 s, every fault). Goals: lost = duplicated = over_overlap = 0,
no 5xx outside a fault's window, every fault recovered with no one acting.
"""

from benchmarks.common import RESULTS as RESULTS_DIR

__all__ = ["RESULTS_DIR"]
