"""The rating calls' database work as PostgreSQL functions: one round trip each.

On this path a round trip costs far more than the statement it carries (about 0.17 ms here for
``SELECT 1``), and an answer took twelve of them. The functions do exactly what the portable
code in ``annotation.services`` does statement by statement (which SQLite still uses, and which
the tests also run on PostgreSQL), with the same locks in the same order:

* ``annotation_seat`` and ``annotation_lease_for_answer``: the rater's place in a campaign, and
  the lease an answer is checked against (joins that took longer to plan than to run; the
  functions keep their plans);
* ``annotation_heartbeat``: check the lease is the rater's and live, move every live lease of the
  rater in that campaign ``lease_seconds`` ahead;
* ``annotation_answer``: lock the lease, check it, lock the item and only then read the clock,
  count the answer on the item, store the judgment, mark the lease answered, count it on the
  rater (blocking after too many failed probes) and, asked to, top the rater's leases up with
  ``annotation_top_up`` in a subtransaction of its own (its failure never costs the answer);
* ``annotation_top_up``: lease items until the rater holds ``p_target`` live leases (or has no
  quota left), then list the live leases. ``p_probes`` names, for each lease it may grant, the
  probe drawn for it (gold, catch or repeat; empty for a regular item), served only while
  regular items remain. Each pick locks its item (``SKIP LOCKED``) and
  the lease is written only if a re-count in a later statement (a fresh snapshot) still finds
  room under the overlap.

Liveness is read from the database clock (``clock_timestamp()``) by the functions that
write, so every comparison that guards the overlap uses one clock. Status and probe values
are those of ``AssignmentStatus`` and ``Probe``.
"""

from django.db import migrations

FUNCTIONS = r"""
CREATE OR REPLACE FUNCTION annotation_seat(p_slug text, p_rater bigint)
RETURNS TABLE (
    enrollment_id bigint, rater_id bigint, n_judgments integer, probes_failed integer,
    blocked boolean, consented boolean, finished boolean, campaign_id bigint,
    campaign_status text, needs_consent boolean, per_rater_limit integer, overlap integer,
    active_order boolean, gold_rate float8, catch_rate float8, repeat_rate float8,
    lease_seconds integer, warn_after integer, completion_code text, completion_url text,
    rater_active boolean)
LANGUAGE plpgsql STABLE AS $fn$
BEGIN
    -- The rater's place in a campaign (the portable path's query, planned once here).
    RETURN QUERY
    SELECT e.id, e.rater_id::bigint, e.n_judgments::integer, e.probes_failed::integer,
           e.blocked, e.consented_at IS NOT NULL, e.finished_at IS NOT NULL, c.id,
           c.status::text, c.consent_text <> '', c.per_rater_limit::integer,
           c.overlap::integer, c.active_order, c.gold_rate, c.catch_rate, c.repeat_rate,
           c.lease_seconds::integer, c.warn_after::integer, c.completion_code::text,
           c.completion_url::text, u.is_active
      FROM annotation_enrollment e
      JOIN annotation_campaign c ON c.id = e.campaign_id
      JOIN auth_user u ON u.id = e.rater_id
     WHERE c.slug = p_slug AND e.rater_id = p_rater;
END
$fn$;

CREATE OR REPLACE FUNCTION annotation_heartbeat(p_token uuid, p_rater bigint,
                                                p_campaign bigint, p_now timestamptz)
RETURNS TABLE (result text, expires timestamptz)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    a record;
    v_expires timestamptz;
BEGIN
    SELECT x.rater_id, x.status, x.expires_at, x.campaign_id, c.lease_seconds INTO a
      FROM annotation_assignment x JOIN annotation_campaign c ON c.id = x.campaign_id
     WHERE x.token = p_token;
    -- p_campaign: the campaign a rater token is bound to (NULL for a session).
    IF NOT FOUND OR a.campaign_id <> coalesce(p_campaign, a.campaign_id) THEN
        RETURN QUERY SELECT 'no_such_assignment'::text, NULL::timestamptz;
    ELSIF a.rater_id <> p_rater THEN
        RETURN QUERY SELECT 'not_your_lease'::text, NULL::timestamptz;
    ELSIF a.status = 'submitted' THEN
        RETURN QUERY SELECT 'already_answered'::text, NULL::timestamptz;
    ELSIF a.status <> 'active' OR a.expires_at <= clock_timestamp() THEN
        RETURN QUERY SELECT 'lease_expired'::text, NULL::timestamptz;
    ELSE
        v_expires := p_now + make_interval(secs => a.lease_seconds);
        UPDATE annotation_assignment SET heartbeat_at = p_now, expires_at = v_expires
         WHERE rater_id = p_rater AND campaign_id = a.campaign_id AND status = 'active'
           AND expires_at > clock_timestamp();
        RETURN QUERY SELECT 'ok'::text, v_expires;
    END IF;
END
$fn$;

CREATE OR REPLACE FUNCTION annotation_lease_for_answer(p_token uuid)
RETURNS TABLE (
    id bigint, rater_id bigint, status text, expires_at timestamptz, item_id bigint,
    probe text, repeat_of_id bigint, "order" jsonb, protocol text, ask_strength boolean,
    reason_tags jsonb, block_after integer, enrollment_id bigint, seat_rater_id bigint,
    n_judgments integer, probes_failed integer, blocked boolean, consented boolean,
    finished boolean, campaign_id bigint, campaign_status text, needs_consent boolean,
    per_rater_limit integer, overlap integer, active_order boolean, gold_rate float8,
    catch_rate float8, repeat_rate float8, lease_seconds integer, warn_after integer,
    completion_code text, completion_url text, rater_active boolean)
LANGUAGE plpgsql STABLE AS $fn$
BEGIN
    -- The lease an answer is checked against, with its campaign's rules and the rater's
    -- place (the query the portable path sends, planned once per connection here).
    RETURN QUERY
    SELECT a.id, a.rater_id::bigint, a.status::text, a.expires_at, a.item_id, a.probe::text,
           a.repeat_of_id, a."order", c.protocol::text, c.ask_strength, c.reason_tags,
           c.block_after::integer, e.id, e.rater_id::bigint, e.n_judgments::integer,
           e.probes_failed::integer, e.blocked, e.consented_at IS NOT NULL,
           e.finished_at IS NOT NULL, c.id, c.status::text, c.consent_text <> '',
           c.per_rater_limit::integer, c.overlap::integer, c.active_order, c.gold_rate,
           c.catch_rate, c.repeat_rate, c.lease_seconds::integer, c.warn_after::integer,
           c.completion_code::text, c.completion_url::text, u.is_active
      FROM annotation_assignment a
      JOIN annotation_campaign c ON c.id = a.campaign_id
      JOIN annotation_enrollment e ON e.campaign_id = a.campaign_id AND e.rater_id = a.rater_id
      JOIN auth_user u ON u.id = a.rater_id
     WHERE a.token = p_token;
END
$fn$;

-- What the top-up leases next: an item (its size gives a fresh order of sides), the probe
-- kind ('none' for a regular item) and, for a hidden repeat, the earlier lease and its sides
-- swapped.
CREATE TYPE annotation_lease_choice AS (item bigint, size integer, kind text,
                                        repeat_of bigint, sides jsonb);

CREATE OR REPLACE FUNCTION annotation_top_up(
    p_campaign bigint, p_rater bigint, p_overlap integer, p_active_order boolean,
    p_target integer, p_quota_left integer, p_now timestamptz, p_expires timestamptz,
    p_probes text[])
RETURNS TABLE (id bigint, token uuid, item_id bigint, probe text, repeat_of_id bigint,
               "order" jsonb, leased_at timestamptz, expires_at timestamptz)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    v_live integer;
    v_want integer;
    v_tries integer := 0;
    v_granted integer := 0;
    v_kind text;
    v_probes text[] := p_probes;
    v_skip bigint[] := '{}';
    v_item record;
    v_probe annotation_lease_choice;
    v_lease annotation_lease_choice;
BEGIN
    SELECT count(*) INTO v_live FROM annotation_assignment l
     WHERE l.rater_id = p_rater AND l.campaign_id = p_campaign AND l.status = 'active'
       AND l.expires_at > clock_timestamp();
    v_want := least(p_target - v_live, p_quota_left - v_live);
    WHILE v_want > 0 AND v_tries < 4 + p_target LOOP
        v_tries := v_tries + 1;
        -- The next regular item (locked): also what tells whether probes may be served (only
        -- while regular items remain). Two statements for the two serving orders, each
        -- walking the ``item_serving_order`` index with a plan kept per connection (one
        -- statement ordering by a CASE would sort every open item on each pick).
        IF p_active_order THEN
            SELECT i.id, i.size INTO v_item FROM annotation_item i
             WHERE i.campaign_id = p_campaign AND i.probe = 'none'
               AND i.n_judgments < p_overlap AND i.id <> ALL (v_skip)
               AND NOT EXISTS (SELECT 1 FROM annotation_assignment m
                                WHERE m.item_id = i.id AND m.rater_id = p_rater
                                  AND m.status IN ('active', 'submitted')
                                  AND m.probe <> 'repeat')
               AND (SELECT count(*) FROM annotation_assignment l
                     WHERE l.item_id = i.id AND l.status = 'active'
                       AND l.expires_at > clock_timestamp() AND l.probe <> 'repeat')
                   < p_overlap - i.n_judgments
             ORDER BY i.priority DESC, i.n_judgments, i.shuffle
             LIMIT 1 FOR NO KEY UPDATE SKIP LOCKED;
        ELSE
            SELECT i.id, i.size INTO v_item FROM annotation_item i
             WHERE i.campaign_id = p_campaign AND i.probe = 'none'
               AND i.n_judgments < p_overlap AND i.id <> ALL (v_skip)
               AND NOT EXISTS (SELECT 1 FROM annotation_assignment m
                                WHERE m.item_id = i.id AND m.rater_id = p_rater
                                  AND m.status IN ('active', 'submitted')
                                  AND m.probe <> 'repeat')
               AND (SELECT count(*) FROM annotation_assignment l
                     WHERE l.item_id = i.id AND l.status = 'active'
                       AND l.expires_at > clock_timestamp() AND l.probe <> 'repeat')
                   < p_overlap - i.n_judgments
             ORDER BY i.n_judgments, i.shuffle
             LIMIT 1 FOR NO KEY UPDATE SKIP LOCKED;
        END IF;
        EXIT WHEN NOT FOUND;
        -- The lease: the probe drawn for it if one can be served, otherwise the regular
        -- item just picked.
        v_kind := coalesce(v_probes[v_granted + 1], '');
        v_lease := ROW(v_item.id, v_item.size, 'none', NULL::bigint, NULL::jsonb);
        IF v_kind IN ('gold', 'catch') THEN
            -- A probe item of that kind the rater has never been shown, at random.
            SELECT i.id, i.size, v_kind, NULL::bigint, NULL::jsonb INTO v_probe
              FROM annotation_item i
             WHERE i.campaign_id = p_campaign AND i.probe = v_kind
               AND NOT EXISTS (SELECT 1 FROM annotation_assignment m
                                WHERE m.item_id = i.id AND m.rater_id = p_rater)
             ORDER BY random() LIMIT 1;
            IF FOUND THEN
                v_lease := v_probe;
            END IF;
        ELSIF v_kind = 'repeat' THEN
            -- One of the rater's own answered regular items, not repeated yet, sides swapped.
            SELECT x.item_id, 0, 'repeat', x.id,
                   (SELECT jsonb_agg(e ORDER BY n DESC)
                      FROM jsonb_array_elements(x."order") WITH ORDINALITY AS t(e, n))
              INTO v_probe
              FROM annotation_assignment x
             WHERE x.rater_id = p_rater AND x.campaign_id = p_campaign
               AND x.probe = 'none' AND x.status = 'submitted'
               AND NOT EXISTS (SELECT 1 FROM annotation_assignment r
                                WHERE r.repeat_of_id = x.id)
             ORDER BY random() LIMIT 1;
            IF FOUND THEN
                v_lease := v_probe;
            END IF;
        END IF;
        IF (v_lease).kind = 'none' THEN
            v_skip := v_skip || v_item.id;
        END IF;
        -- A regular lease is written only if a re-count (this statement's fresh snapshot, the
        -- item's lock held) still finds room; probes are not part of the overlap. A second
        -- tab that took the item a moment earlier makes it write nothing.
        INSERT INTO annotation_assignment (token, campaign_id, item_id, rater_id, probe,
                                           repeat_of_id, "order", status, leased_at,
                                           heartbeat_at, expires_at)
        SELECT gen_random_uuid(), p_campaign, (v_lease).item, p_rater, (v_lease).kind,
               (v_lease).repeat_of,
               coalesce((v_lease).sides, (SELECT jsonb_agg(g ORDER BY random())
                                            FROM generate_series(0, (v_lease).size - 1) g)),
               'active', p_now, p_now, p_expires
         WHERE (v_lease).kind <> 'none'
            OR (SELECT i.n_judgments + (SELECT count(*) FROM annotation_assignment l
                                         WHERE l.item_id = i.id AND l.status = 'active'
                                           AND l.expires_at > clock_timestamp()
                                           AND l.probe <> 'repeat')
                  FROM annotation_item i WHERE i.id = (v_lease).item) < p_overlap
        ON CONFLICT DO NOTHING;
        IF FOUND THEN
            v_want := v_want - 1;
            v_granted := v_granted + 1;
        ELSIF (v_lease).kind <> 'none' THEN
            v_probes[v_granted + 1] := '';  -- the probe could not be written: a regular item
        END IF;
    END LOOP;
    RETURN QUERY
    SELECT a.id, a.token, a.item_id, a.probe::text, a.repeat_of_id, a."order", a.leased_at,
           a.expires_at
      FROM annotation_assignment a
     WHERE a.rater_id = p_rater AND a.campaign_id = p_campaign AND a.status = 'active'
       AND a.expires_at > clock_timestamp()
     ORDER BY a.leased_at, a.id;
END
$fn$;

CREATE OR REPLACE FUNCTION annotation_answer(
    p_token uuid, p_rater bigint, p_key uuid, p_choice text, p_outcome text,
    p_strength integer, p_reasons jsonb, p_scores jsonb, p_decision_ms integer,
    p_viewing_ms integer, p_playback jsonb, p_qc jsonb, p_passed integer, p_failed integer,
    p_now timestamptz, p_top_up boolean, p_target integer, p_expires timestamptz,
    p_probes text[])
RETURNS TABLE (result text, judgment_id bigint, n_judgments integer, probes_failed integer,
               blocked boolean, leases jsonb)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    a record;
    e record;
    v_id bigint;
    v_leases jsonb;
BEGIN
    SELECT x.id, x.rater_id, x.status, x.expires_at, x.item_id, x.probe, x."order",
           x.campaign_id, c.block_after, c.status AS campaign_status, c.per_rater_limit,
           c.overlap, c.active_order INTO a
      FROM annotation_assignment x JOIN annotation_campaign c ON c.id = x.campaign_id
     WHERE x.token = p_token
       FOR NO KEY UPDATE OF x;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'no_such_assignment'::text, NULL::bigint, NULL::integer,
                            NULL::integer, NULL::boolean, NULL::jsonb;
        RETURN;
    END IF;
    IF a.rater_id <> p_rater THEN
        RETURN QUERY SELECT 'not_your_lease'::text, NULL::bigint, NULL::integer,
                            NULL::integer, NULL::boolean, NULL::jsonb;
        RETURN;
    END IF;
    IF a.status <> 'active' OR a.expires_at <= clock_timestamp() THEN
        -- A retry of the stored answer succeeds; anything else is refused.
        SELECT j.id INTO v_id FROM annotation_judgment j
         WHERE j.idempotency_key = p_key AND j.assignment_id = a.id;
        IF FOUND THEN
            RETURN QUERY SELECT 'stored_before'::text, v_id, NULL::integer, NULL::integer,
                                NULL::boolean, NULL::jsonb;
        ELSE
            RETURN QUERY SELECT (CASE WHEN a.status = 'submitted' THEN 'already_answered'
                                      ELSE 'lease_expired' END)::text,
                                NULL::bigint, NULL::integer, NULL::integer, NULL::boolean,
                                NULL::jsonb;
        END IF;
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM annotation_judgment j WHERE j.idempotency_key = p_key) THEN
        RETURN QUERY SELECT 'key_reused'::text, NULL::bigint, NULL::integer, NULL::integer,
                            NULL::boolean, NULL::jsonb;
        RETURN;
    END IF;
    IF a.probe = 'none' THEN
        -- The item's lock first (leasing holds it while counting live leases), then the
        -- clock: a lease a concurrent leaser already saw as expired is refused here.
        PERFORM 1 FROM annotation_item i WHERE i.id = a.item_id FOR NO KEY UPDATE;
        IF a.expires_at <= clock_timestamp() THEN
            RETURN QUERY SELECT 'lease_expired'::text, NULL::bigint, NULL::integer,
                                NULL::integer, NULL::boolean, NULL::jsonb;
            RETURN;
        END IF;
        UPDATE annotation_item SET n_judgments = n_judgments + 1 WHERE id = a.item_id;
    END IF;
    INSERT INTO annotation_judgment (
        idempotency_key, assignment_id, campaign_id, item_id, rater_id, probe, "order",
        choice, outcome, strength, reasons, scores, decision_ms, viewing_ms, playback, qc,
        created_at)
    VALUES (p_key, a.id, a.campaign_id, a.item_id, p_rater, a.probe, a."order", p_choice,
            p_outcome, p_strength, p_reasons, p_scores, p_decision_ms, p_viewing_ms,
            p_playback, p_qc, p_now)
    RETURNING id INTO v_id;
    UPDATE annotation_assignment SET status = 'submitted' WHERE id = a.id;
    UPDATE annotation_enrollment en
       SET n_judgments = en.n_judgments + 1,
           probes_passed = en.probes_passed + p_passed,
           probes_failed = en.probes_failed + p_failed,
           blocked = (en.blocked OR en.probes_failed + p_failed >= a.block_after)
     WHERE en.campaign_id = a.campaign_id AND en.rater_id = p_rater
    RETURNING en.n_judgments, en.probes_failed, en.blocked INTO e;
    IF p_top_up AND NOT e.blocked AND a.campaign_status = 'active' THEN
        -- The rater's next items, in the same call. A failure there is the top-up's alone
        -- (its own subtransaction): the answer stands and the page asks on its own.
        BEGIN
            SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY t.leased_at, t.id), '[]'::jsonb)
              INTO v_leases
              FROM annotation_top_up(a.campaign_id, p_rater, a.overlap, a.active_order,
                                     p_target, a.per_rater_limit - e.n_judgments, p_now,
                                     p_expires, p_probes) t;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'topping up rater % after judgment % failed: %', p_rater, v_id,
                SQLERRM;
            v_leases := NULL;
        END;
    END IF;
    RETURN QUERY SELECT 'stored'::text, v_id, e.n_judgments, e.probes_failed, e.blocked,
                        v_leases;
END
$fn$;
"""

DROP = """
DROP FUNCTION IF EXISTS annotation_seat(text, bigint);
DROP FUNCTION IF EXISTS annotation_lease_for_answer(uuid);
DROP FUNCTION IF EXISTS annotation_heartbeat(uuid, bigint, bigint, timestamptz);
DROP FUNCTION IF EXISTS annotation_answer(uuid, bigint, uuid, text, text, integer, jsonb, jsonb,
    integer, integer, jsonb, jsonb, integer, integer, timestamptz, boolean, integer, timestamptz,
    text[]);
DROP FUNCTION IF EXISTS annotation_top_up(bigint, bigint, integer, boolean, integer, integer,
    timestamptz, timestamptz, text[]);
DROP TYPE IF EXISTS annotation_lease_choice;
"""


def create(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FUNCTIONS, params=None)  # "%" is PL/pgSQL's, not a placeholder


def drop(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("annotation", "0002_roles")]

    operations = [migrations.RunPython(create, drop)]
