"""An answer in one round trip: ``annotation_answer`` checks it against its lease itself.

Before, the answer took two calls: ``annotation_lease_for_answer`` read the lease for Python to
check the answer against, then ``annotation_answer`` stored it. On this path a round trip costs
CPU on both sides whatever it carries (the rating benchmark measures it), so the new
``annotation_answer`` does the checks that need the lease and its campaign, in the order the
portable code in ``annotation.services.judgments`` does them:

1. the lease (locked), its campaign, the rater's enrolment and account (a retry's reply reads the
   rater's counters again, after the wait for the lock): unknown, or bound to
   another campaign than the rater token's -> ``no_such_assignment``; the account switched off
   -> ``account_disabled``; another rater's -> ``not_your_lease``; answered or run out ->
   ``stored_before`` for a retry of the stored answer (same key, same lease), otherwise
   ``already_answered`` / ``lease_expired``;
2. the answer against the campaign's protocol and the lease: ``invalid:<what>`` (Python words
   the 400 for each, the same words as the portable check);
3. the key used for another lease -> ``key_reused`` (checked here, before the item's lock; the
   portable code meets it at its insert, after the lock and the clock, so a reused key on a
   lease that runs out meanwhile is 409 here and 410 there: both final for the page);
4. what the answer means: the side pressed mapped to the item's slot (``outcome``), group scores
   put in slot order, and the probe's verdict (gold: slot ``a`` won; catch: a tie; hidden
   repeat: the rater's first answer again);
5. then as before: the item's lock and the clock, the counts, the judgment, the lease answered,
   the rater's counters and, if asked and the rater may go on, the top-up in a subtransaction
   of its own, with the probe kinds drawn here from ``p_draws`` (uniform numbers from Python) at
   the campaign's rates.

It returns the stored judgment's derived fields and the rater's place (the columns of
``SEAT_COLUMNS``) as they are after the answer.

Shapes that need neither lease nor campaign (a known choice, strength 1 to 3, a list of tags,
score sets of the right criteria) are checked in Python before the call.

The new function has other arguments than 0003's ``annotation_answer``, so both exist side by
side: 0003's pair (with ``annotation_lease_for_answer``) is left in place for one release, so
that workers still running the previous code keep storing answers while they restart after the
migration. A later migration drops them.
"""

from django.db import migrations

FUNCTIONS = r"""
CREATE FUNCTION annotation_answer(
    p_token uuid, p_rater bigint, p_campaign bigint, p_key uuid, p_choice text,
    p_strength integer, p_reasons jsonb, p_scores jsonb, p_decision_ms integer,
    p_viewing_ms integer, p_playback jsonb, p_now timestamptz, p_top_up boolean,
    p_target integer, p_draws float8[])
RETURNS TABLE (
    result text, judgment_id bigint, outcome text, scores jsonb, qc jsonb, "order" jsonb,
    probe text, item_id bigint, assignment_id bigint, was_blocked boolean, leases jsonb,
    enrollment_id bigint, rater_id bigint, n_judgments integer, probes_failed integer,
    blocked boolean, consented boolean, finished boolean, campaign_id bigint,
    campaign_status text, needs_consent boolean, per_rater_limit integer, overlap integer,
    active_order boolean, gold_rate float8, catch_rate float8, repeat_rate float8,
    lease_seconds integer, warn_after integer, completion_code text, completion_url text,
    rater_active boolean)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    a record;
    e record;
    v_id bigint;
    v_outcome text := '';
    v_scores jsonb;
    v_qc jsonb := '{}'::jsonb;
    v_first text;
    v_passed integer := 0;
    v_failed integer := 0;
    v_probes text[];
    v_leases jsonb;
    v_size integer;
    v_slot integer;
BEGIN
    SELECT x.id, x.rater_id, x.status, x.expires_at, x.item_id, x.probe, x.repeat_of_id,
           x."order", x.campaign_id, c.protocol, c.ask_strength, c.reason_tags, c.block_after,
           c.status AS campaign_status, c.consent_text <> '' AS needs_consent,
           c.per_rater_limit, c.overlap, c.active_order, c.gold_rate, c.catch_rate,
           c.repeat_rate, c.lease_seconds, c.warn_after, c.completion_code, c.completion_url,
           en.id AS enrollment_id, en.n_judgments, en.probes_failed, en.blocked,
           en.consented_at IS NOT NULL AS consented, en.finished_at IS NOT NULL AS finished,
           u.is_active
      INTO a
      FROM annotation_assignment x
      JOIN annotation_campaign c ON c.id = x.campaign_id
      JOIN annotation_enrollment en ON en.campaign_id = x.campaign_id
                                   AND en.rater_id = x.rater_id
      JOIN auth_user u ON u.id = x.rater_id
     WHERE x.token = p_token
       FOR NO KEY UPDATE OF x;
    -- p_campaign: the campaign a rater token is bound to (NULL for a session).
    IF NOT FOUND OR a.campaign_id <> coalesce(p_campaign, a.campaign_id) THEN
        result := 'no_such_assignment';
        RETURN NEXT;
        RETURN;
    END IF;
    -- The rater's place as it is now (the reply's, unless an answer is stored below).
    enrollment_id := a.enrollment_id; rater_id := a.rater_id; n_judgments := a.n_judgments;
    probes_failed := a.probes_failed; blocked := a.blocked; consented := a.consented;
    finished := a.finished; campaign_id := a.campaign_id;
    campaign_status := a.campaign_status; needs_consent := a.needs_consent;
    per_rater_limit := a.per_rater_limit; overlap := a.overlap;
    active_order := a.active_order; gold_rate := a.gold_rate; catch_rate := a.catch_rate;
    repeat_rate := a.repeat_rate; lease_seconds := a.lease_seconds;
    warn_after := a.warn_after; completion_code := a.completion_code;
    completion_url := a.completion_url; rater_active := a.is_active;
    was_blocked := a.blocked;
    IF NOT a.is_active THEN
        result := 'account_disabled';
        RETURN NEXT;
        RETURN;
    END IF;
    IF a.rater_id <> p_rater THEN
        result := 'not_your_lease';
        RETURN NEXT;
        RETURN;
    END IF;
    IF a.status <> 'active' OR a.expires_at <= clock_timestamp() THEN
        -- A retry of the stored answer succeeds; anything else is refused.
        SELECT j.id INTO v_id FROM annotation_judgment j
         WHERE j.idempotency_key = p_key AND j.assignment_id = a.id;
        IF FOUND THEN
            result := 'stored_before';
            judgment_id := v_id;
            -- The rater's counters as that answer left them (a fresh snapshot: the one above
            -- predates the wait for the lease's lock).
            SELECT en.n_judgments, en.probes_failed, en.blocked
              INTO n_judgments, probes_failed, blocked
              FROM annotation_enrollment en WHERE en.id = a.enrollment_id;
        ELSIF a.status = 'submitted' THEN
            result := 'already_answered';
        ELSE
            result := 'lease_expired';
        END IF;
        RETURN NEXT;
        RETURN;
    END IF;

    -- The answer against the campaign's protocol and the lease (annotation.services.judgments:
    -- _pairwise, _group).
    v_size := jsonb_array_length(a."order");
    IF a.protocol = 'pairwise' THEN
        IF p_scores IS NOT NULL THEN
            result := 'invalid:scores_for_pairwise';
        ELSIF p_choice IS NULL THEN
            result := 'invalid:choice';
        ELSIF p_strength IS NOT NULL AND NOT a.ask_strength THEN
            result := 'invalid:strength_not_asked';
        ELSIF p_strength IS NOT NULL AND p_choice NOT IN ('left', 'right') THEN
            result := 'invalid:strength_side';
        ELSIF NOT (coalesce(p_reasons, '[]'::jsonb) <@ coalesce(a.reason_tags, '[]'::jsonb)) THEN
            result := 'invalid:reasons';
        END IF;
    ELSIF p_choice IS NOT NULL THEN
        result := 'invalid:choice_for_group';
    ELSIF p_scores IS NULL OR jsonb_array_length(p_scores) <> v_size THEN
        result := 'invalid:scores_count:' || v_size;
    END IF;
    IF result IS NOT NULL THEN
        RETURN NEXT;
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM annotation_judgment j WHERE j.idempotency_key = p_key) THEN
        result := 'key_reused';
        RETURN NEXT;
        RETURN;
    END IF;

    -- What the answer means, in the item's terms.
    IF a.protocol = 'pairwise' THEN
        IF p_choice IN ('left', 'right') THEN
            v_slot := (a."order" ->> (CASE WHEN p_choice = 'left' THEN 0 ELSE 1 END))::integer;
            v_outcome := CASE WHEN v_slot = 0 THEN 'a' ELSE 'b' END;
        ELSE
            v_outcome := p_choice;
        END IF;
    ELSE
        -- Scores arrive in the order shown; stored in slot order.
        SELECT jsonb_agg(p_scores -> (t.pos::integer - 1) ORDER BY t.slot::integer)
          INTO v_scores
          FROM jsonb_array_elements_text(a."order") WITH ORDINALITY AS t(slot, pos);
    END IF;
    IF a.probe = 'gold' THEN
        v_qc := jsonb_build_object('probe', 'gold', 'passed', v_outcome = 'a');
    ELSIF a.probe = 'catch' THEN
        v_qc := jsonb_build_object('probe', 'catch', 'passed', v_outcome = 'tie');
    ELSIF a.probe = 'repeat' THEN
        SELECT j.outcome INTO v_first FROM annotation_judgment j
         WHERE j.assignment_id = a.repeat_of_id;
        v_qc := jsonb_build_object('probe', 'repeat', 'passed', coalesce(v_first = v_outcome,
                                   false), 'first', v_first);
    END IF;
    IF v_qc ? 'passed' THEN
        IF (v_qc ->> 'passed')::boolean THEN v_passed := 1; ELSE v_failed := 1; END IF;
    END IF;

    IF a.probe = 'none' THEN
        -- The item's lock first (leasing holds it while counting live leases), then the
        -- clock: a lease a concurrent leaser already saw as expired is refused here.
        PERFORM 1 FROM annotation_item i WHERE i.id = a.item_id FOR NO KEY UPDATE;
        IF a.expires_at <= clock_timestamp() THEN
            result := 'lease_expired';
            RETURN NEXT;
            RETURN;
        END IF;
        UPDATE annotation_item SET n_judgments = n_judgments + 1 WHERE id = a.item_id;
    END IF;
    INSERT INTO annotation_judgment (
        idempotency_key, assignment_id, campaign_id, item_id, rater_id, probe, "order",
        choice, outcome, strength, reasons, scores, decision_ms, viewing_ms, playback, qc,
        created_at)
    VALUES (p_key, a.id, a.campaign_id, a.item_id, p_rater, a.probe, a."order",
            coalesce(p_choice, ''), v_outcome,
            -- strength and reasons belong to pairwise answers (ignored for group scores)
            CASE WHEN a.protocol = 'pairwise' THEN p_strength END,
            CASE WHEN a.protocol = 'pairwise' THEN coalesce(p_reasons, '[]'::jsonb)
                 ELSE '[]'::jsonb END,
            v_scores, p_decision_ms, p_viewing_ms, p_playback, v_qc, p_now)
    RETURNING id INTO v_id;
    UPDATE annotation_assignment SET status = 'submitted' WHERE id = a.id;
    UPDATE annotation_enrollment en
       SET n_judgments = en.n_judgments + 1,
           probes_passed = en.probes_passed + v_passed,
           probes_failed = en.probes_failed + v_failed,
           blocked = (en.blocked OR en.probes_failed + v_failed >= a.block_after)
     WHERE en.id = a.enrollment_id
    RETURNING en.n_judgments, en.probes_failed, en.blocked INTO e;
    n_judgments := e.n_judgments; probes_failed := e.probes_failed; blocked := e.blocked;
    IF p_top_up AND NOT e.blocked AND a.campaign_status = 'active'
       AND (a.consented OR NOT a.needs_consent) THEN
        -- The probe kind for each lease the top-up may grant, at the campaign's rates
        -- (scheduling.probe_kind).
        SELECT array_agg(CASE WHEN u < a.gold_rate THEN 'gold'
                              WHEN u < a.gold_rate + a.catch_rate THEN 'catch'
                              WHEN u < a.gold_rate + a.catch_rate + a.repeat_rate THEN 'repeat'
                              ELSE '' END ORDER BY n)
          INTO v_probes FROM unnest(p_draws) WITH ORDINALITY AS d(u, n);
        -- The rater's next items, in the same call. A failure there is the top-up's alone
        -- (its own subtransaction): the answer stands and the page asks on its own.
        BEGIN
            SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY t.leased_at, t.id), '[]'::jsonb)
              INTO v_leases
              FROM annotation_top_up(a.campaign_id, p_rater, a.overlap, a.active_order,
                                     p_target, a.per_rater_limit - e.n_judgments, p_now,
                                     p_now + make_interval(secs => a.lease_seconds),
                                     v_probes) t;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'topping up rater % after judgment % failed: %', p_rater, v_id,
                SQLERRM;
            v_leases := NULL;
        END;
    END IF;
    result := 'stored'; judgment_id := v_id; outcome := v_outcome; scores := v_scores;
    qc := v_qc; "order" := a."order"; probe := a.probe; item_id := a.item_id;
    assignment_id := a.id; leases := v_leases;
    RETURN NEXT;
END
$fn$;
"""

DROP = ("DROP FUNCTION IF EXISTS annotation_answer(uuid, bigint, bigint, uuid, text, integer, "
        "jsonb, jsonb, integer, integer, jsonb, timestamptz, boolean, integer, float8[]);")


def create(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FUNCTIONS, params=None)  # "%" is PL/pgSQL's, not a placeholder


def drop(apps, schema_editor) -> None:
    """Back to migration 0003's functions alone (the answer in two calls)."""
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("annotation", "0004_lean_lease_indexes")]

    operations = [migrations.RunPython(create, drop)]
