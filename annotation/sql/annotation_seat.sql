-- The rater's place in a campaign: the enrolment's counters and what serving needs of the
-- campaign (the rating calls' hottest read; a function keeps its plan per connection), and the
-- rater's lapses there: their leases that ended without an answer (ran out, or were ended) and
-- with no answer of theirs since, counted with the time the latest ended (annotation.rules
-- decides about a cool-down).
CREATE OR REPLACE FUNCTION annotation_seat(p_slug text, p_rater bigint)
RETURNS TABLE (
    enrollment_id bigint, rater_id bigint, n_judgments integer, probes_failed integer,
    blocked boolean, excluded boolean, consented boolean, finished boolean, campaign_id bigint,
    campaign_status text, needs_consent boolean, per_rater_limit integer, overlap integer,
    active_order boolean, gold_rate float8, catch_rate float8, repeat_rate float8,
    lease_seconds integer, warn_after integer, block_after integer, completion_code text,
    completion_url text, rater_active boolean, lapses integer, lapsed_at timestamptz)
LANGUAGE plpgsql STABLE AS $fn$
BEGIN
    RETURN QUERY
    SELECT e.id, e.rater_id::bigint, e.n_judgments::integer, e.probes_failed::integer,
           e.blocked, e.excluded, e.consented_at IS NOT NULL, e.finished_at IS NOT NULL, c.id,
           c.status::text, c.consent_text <> '', c.per_rater_limit::integer,
           c.overlap::integer, c.active_order, c.gold_rate, c.catch_rate, c.repeat_rate,
           c.lease_seconds::integer, c.warn_after::integer, c.block_after::integer,
           c.completion_code::text, c.completion_url::text, u.is_active, l.n::integer,
           l.latest
      FROM annotation_enrollment e
      JOIN annotation_campaign c ON c.id = e.campaign_id
      JOIN auth_user u ON u.id = e.rater_id
      CROSS JOIN LATERAL (
          SELECT count(*) AS n, max(x.expires_at) AS latest
            FROM annotation_assignment x
           WHERE x.rater_id = e.rater_id AND x.campaign_id = e.campaign_id
             AND x.status <> 'submitted' AND x.expires_at <= clock_timestamp()
             AND NOT EXISTS (SELECT 1 FROM annotation_judgment j
                              WHERE j.rater_id = e.rater_id
                                AND j.campaign_id = e.campaign_id
                                AND j.created_at >= x.expires_at)) l
     WHERE c.slug = p_slug AND e.rater_id = p_rater;
END
$fn$;
