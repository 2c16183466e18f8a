-- Store an answer that annotation.rules has already read, checked and given its meaning:
-- mechanics only, in one call. Lock the lease (it must be p_rater's); if it is no longer live
-- (answered, run out, or its campaign closed, which ends its leases), return the judgment this
-- key stored on it (a retry) or the lease's state; refuse a key that
-- another lease's answer took; for a regular item take the item's lock (leasing holds it while
-- counting live leases) and only then read the clock, so that a lease a concurrent leaser
-- already saw as expired is refused; count the answer on the item, insert the judgment as
-- given, mark the lease answered, count it on the rater (p_passed, p_failed; p_block sets the
-- block flag) and, when p_probes is given, top the rater's leases up to p_target in a
-- subtransaction of its own (its failure never costs the answer), each new lease good for
-- lease_seconds but no more than p_max_age seconds.
--
-- result: 'stored'; 'stored_before' (judgment_id: this key's judgment on this lease);
-- 'not_live' (lease_status, lease_expired and campaign_status, read after the lock, say
-- why); 'key_taken'; 'gone' (no such lease of p_rater's).
CREATE OR REPLACE FUNCTION annotation_answer(
    p_token uuid, p_rater bigint, p_key uuid, p_choice text, p_outcome text,
    p_strength integer, p_reasons jsonb, p_scores jsonb, p_qc jsonb, p_passed integer,
    p_failed integer, p_block boolean, p_decision_ms integer, p_viewing_ms integer,
    p_playback jsonb, p_now timestamptz, p_target integer, p_probes text[],
    p_max_age integer)
RETURNS TABLE (result text, judgment_id bigint, lease_status text, lease_expired boolean,
               campaign_status text, n_judgments integer, probes_failed integer,
               blocked boolean, leases jsonb)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    a record;
    e record;
    v_id bigint;
BEGIN
    SELECT x.id, x.status, x.expires_at, x.item_id, x.probe, x."order", x.campaign_id,
           c.status AS campaign_status, c.per_rater_limit, c.overlap, c.active_order,
           c.lease_seconds, en.id AS enrollment_id INTO a
      FROM annotation_assignment x
      JOIN annotation_campaign c ON c.id = x.campaign_id
      JOIN annotation_enrollment en ON en.campaign_id = x.campaign_id
                                   AND en.rater_id = x.rater_id
     WHERE x.token = p_token AND x.rater_id = p_rater
       FOR NO KEY UPDATE OF x;
    IF NOT FOUND THEN
        result := 'gone';
        RETURN NEXT;
        RETURN;
    END IF;
    IF a.status <> 'active' OR a.expires_at <= clock_timestamp()
       OR a.campaign_status = 'closed' THEN
        SELECT j.id INTO v_id FROM annotation_judgment j
         WHERE j.idempotency_key = p_key AND j.assignment_id = a.id;
        IF FOUND THEN
            result := 'stored_before';
            judgment_id := v_id;
            -- The rater's counters as they are now (a fresh snapshot, after the lock's wait).
            SELECT en.n_judgments, en.probes_failed, en.blocked
              INTO n_judgments, probes_failed, blocked
              FROM annotation_enrollment en WHERE en.id = a.enrollment_id;
        ELSE
            result := 'not_live';
            lease_status := a.status;
            lease_expired := a.expires_at <= clock_timestamp();
            -- A fresh snapshot: a close that ended this lease while we waited for its lock.
            SELECT c.status INTO campaign_status FROM annotation_campaign c
             WHERE c.id = a.campaign_id;
        END IF;
        RETURN NEXT;
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM annotation_judgment j WHERE j.idempotency_key = p_key) THEN
        result := 'key_taken';
        RETURN NEXT;
        RETURN;
    END IF;
    IF a.probe = 'none' THEN
        PERFORM 1 FROM annotation_item i WHERE i.id = a.item_id FOR NO KEY UPDATE;
        IF a.expires_at <= clock_timestamp() THEN
            result := 'not_live';
            lease_status := a.status;
            lease_expired := true;
            RETURN NEXT;
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
           blocked = en.blocked OR p_block
     WHERE en.id = a.enrollment_id
    RETURNING en.n_judgments, en.probes_failed, en.blocked INTO e;
    IF p_probes IS NOT NULL THEN
        BEGIN
            SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY t.leased_at, t.id), '[]'::jsonb)
              INTO leases
              FROM annotation_top_up(a.campaign_id, p_rater, a.overlap, a.active_order,
                                     p_target, a.per_rater_limit - e.n_judgments, p_now,
                                     p_now + make_interval(
                                         secs => least(a.lease_seconds, p_max_age)),
                                     p_probes) t;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'topping up rater % after judgment % failed: %', p_rater, v_id,
                SQLERRM;
            leases := NULL;
        END;
    END IF;
    result := 'stored';
    judgment_id := v_id;
    n_judgments := e.n_judgments;
    probes_failed := e.probes_failed;
    blocked := e.blocked;
    RETURN NEXT;
END
$fn$;
