"""Raters under load: the rating calls against gunicorn on PostgreSQL, paced, then saturation.

    python -m benchmarks.rating [--raters 200] [--pace 2] [--paced-s 60] [--sat-raters 32]
                                [--sat-s 20] [--sat-rounds 3] [--capacity 10,25,50]
                                [--sweep [--sweep-s 4] [--sweep-rounds 2]] [--quick]

Everything runs on this machine; traffic goes only to 127.0.0.1, for a bounded time:

1. A throw-away PostgreSQL database ``backchannel_bench`` (dropped and made again, migrated, left
   behind for inspection; ``BENCH_DATABASE_URL`` names another), a synthetic corpus and one
   large pairwise campaign (3,360 items, overlap 3, gold/catch/repeat probes at the default
   rates, consent text), its clips marked rendered with stand-in files, and an earlier, closed
   round over the same corpus, fully answered by the same raters (written in bulk), so the
   tables are those of a platform at work rather than a new install. The environment
   (``SECRET_KEY``, ``DEBUG=0``, plain HTTP cookies, ...) is set here; ``scripts/test`` makes
   .venv and starts PostgreSQL (``fixtures.py``).
2. Raters join through the invite page over HTTP (GET, then POST with the CSRF token and
   consent), each with its own session cookie, as a browser does, and open the rate page for
   the rater token it hands its script (``load.py``).
3. The server: gunicorn with gevent workers and a connection pool (``DB_POOL=1``), the
   configuration the sweep found fastest in three of its last five recorded runs. With ``--sweep``,
   short saturation runs against ``manage.py runserver`` (what a first-time user starts),
   gunicorn's default (one sync worker) and tuned gunicorn configurations (sync, gthread,
   gevent with a connection pool) take turns over two rounds, and the fastest tuned one is
   measured in full instead (``sweep.py``). Each rater works as the rate page does: one
   kept-alive connection, the token in a header, the next items carried by each answer's reply
   (``next`` when the page opens, after an error and on one item in ten, a reload):
   (a) paced: ``--raters`` raters, each completing one item (a heartbeat, then the answer) every
       ``--pace`` seconds (about ten times a real rater's pace); goal p95 < 50 ms everywhere;
   (b) saturation: ``--sat-raters`` raters with no think time, ``--sat-rounds`` runs, the median
       reported; goal over 300 judgments/s. Also: the same with answers only (the page sends no
       heartbeat for an item answered within the heartbeat interval), the same answered by the
       REST views with the fast path switched off (``RATING_FAST_PATH=0``), a client that signs
       in with the session and asks for each next item separately (three calls per item), and
       a DRF rating view that does nothing (what that stack costs before any rating work). The
       paced load also runs against gunicorn's default, and with fewer raters (``--capacity``);
       last, saturation on the tables of a new install (the earlier round removed).
4. Where the time goes: the server answers with its own time per request (``X-Bench`` header
   from ``benchmarks/rating_settings.py``, which wraps the project's WSGI application: µs in
   the application, SQL statements, µs in them), the CPU of the server processes, PostgreSQL,
   this load generator and everything else is read from /proc (``servers.py``), PostgreSQL's
   own counts of pages and rows it read, which do not drift with the machine's speed
   (``postgres.py``), and, in process with Django's test client, the statements of each call
   and the cost of a request that does nothing (``in_process.py``).

Each run starts from the same state: the campaign's leases and judgments are deleted, counters
zeroed and the tables vacuumed; planner statistics are taken after a warm-up, as autovacuum
keeps them in a running campaign. Takes about 7 minutes with ``--sweep`` (its 14 short runs
take about two of them), ``--quick`` about 3. The figures describe this machine (other
processes on it are measured too); timings are never tests.
Results: benchmarks/results/rating.json (``--quick``: rating-quick.json in the temporary folder)
"""


def __getattr__(name: str):
    # The measured server's URLconf is this package (ROOT_URLCONF in rating_settings.py); the
    # URLs are built on first use, once Django is set up.
    if name != "urlpatterns":
        raise AttributeError(name)
    from benchmarks.rating.urls import urlpatterns

    return urlpatterns
