-- Keep a rater's leases alive: when the lease is the rater's, live and in p_campaign (the
-- campaign a rater token is bound to; NULL for a session) and its campaign is active, every
-- live lease of the rater in that campaign moves lease_seconds ahead, but never past p_max_age
-- seconds after it was granted (a page that heartbeats and never answers loses its items
-- then); a paused campaign's run out; a closed campaign's were ended when it closed. Returns
-- the lease's state either way (no row: no such lease) and its new expiry, and
-- annotation.rules names the refusal.
CREATE OR REPLACE FUNCTION annotation_heartbeat(p_token uuid, p_rater bigint,
                                                p_campaign bigint, p_now timestamptz,
                                                p_max_age integer)
RETURNS TABLE (lease_rater_id bigint, lease_status text, lease_expired boolean,
               campaign_id bigint, campaign_status text, rater_active boolean,
               expires timestamptz)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    a record;
    v_expires timestamptz;
BEGIN
    SELECT x.rater_id, x.status, x.expires_at <= clock_timestamp() AS expired, x.campaign_id,
           x.leased_at, c.status AS campaign_status, c.lease_seconds, u.is_active INTO a
      FROM annotation_assignment x
      JOIN annotation_campaign c ON c.id = x.campaign_id
      JOIN auth_user u ON u.id = x.rater_id
     WHERE x.token = p_token;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF a.rater_id = p_rater AND a.campaign_id = coalesce(p_campaign, a.campaign_id)
       AND a.is_active AND a.status = 'active' AND NOT a.expired
       AND a.campaign_status = 'active' THEN
        v_expires := least(p_now + make_interval(secs => a.lease_seconds),
                           a.leased_at + make_interval(secs => p_max_age));
        UPDATE annotation_assignment x
           SET heartbeat_at = p_now,
               expires_at = least(p_now + make_interval(secs => a.lease_seconds),
                                  x.leased_at + make_interval(secs => p_max_age))
         WHERE x.rater_id = p_rater AND x.campaign_id = a.campaign_id AND x.status = 'active'
           AND x.expires_at > clock_timestamp();
    END IF;
    RETURN QUERY SELECT a.rater_id::bigint, a.status::text, a.expired, a.campaign_id::bigint,
                        a.campaign_status::text, a.is_active, v_expires;
END
$fn$;
