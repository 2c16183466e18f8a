-- What deciding about an answer needs, read without a lock (annotation.rules decides in
-- Python, then annotation_answer stores under the lease's lock): the lease, whether its time
-- ran out by this database's clock, its campaign's rules, the first answer a hidden repeat is
-- compared with, and the place of the lease's rater in the campaign (the columns of
-- annotation_seat). A lease's item, probe, sides and first answer never change once written.
CREATE OR REPLACE FUNCTION annotation_lease_context(p_token uuid)
RETURNS TABLE (
    lease_id bigint, lease_rater_id bigint, lease_status text, lease_expired boolean,
    item_id bigint, probe text, repeat_of_id bigint, "order" jsonb, protocol text,
    ask_strength boolean, reason_tags jsonb, criteria_weights jsonb, first_outcome text,
    first_scores jsonb,
    enrollment_id bigint, rater_id bigint, n_judgments integer, probes_failed integer,
    blocked boolean, excluded boolean, consented boolean, finished boolean, campaign_id bigint,
    campaign_status text, needs_consent boolean, per_rater_limit integer, overlap integer,
    active_order boolean, gold_rate float8, catch_rate float8, repeat_rate float8,
    lease_seconds integer, warn_after integer, block_after integer, completion_code text,
    completion_url text, rater_active boolean)
LANGUAGE plpgsql STABLE AS $fn$
BEGIN
    RETURN QUERY
    SELECT a.id, a.rater_id::bigint, a.status::text, a.expires_at <= clock_timestamp(),
           a.item_id, a.probe::text, a.repeat_of_id, a."order", c.protocol::text,
           c.ask_strength, c.reason_tags, c.criteria_weights, f.outcome::text, f.scores,
           e.id, e.rater_id::bigint, e.n_judgments::integer, e.probes_failed::integer,
           e.blocked, e.excluded, e.consented_at IS NOT NULL, e.finished_at IS NOT NULL, c.id,
           c.status::text, c.consent_text <> '', c.per_rater_limit::integer,
           c.overlap::integer, c.active_order, c.gold_rate, c.catch_rate, c.repeat_rate,
           c.lease_seconds::integer, c.warn_after::integer, c.block_after::integer,
           c.completion_code::text, c.completion_url::text, u.is_active
      FROM annotation_assignment a
      JOIN annotation_campaign c ON c.id = a.campaign_id
      JOIN annotation_enrollment e ON e.campaign_id = a.campaign_id AND e.rater_id = a.rater_id
      JOIN auth_user u ON u.id = a.rater_id
      LEFT JOIN annotation_judgment f ON f.assignment_id = a.repeat_of_id
     WHERE a.token = p_token;
END
$fn$;
