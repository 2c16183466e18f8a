-- Lease items until the rater holds p_target live leases (or has no quota left), then list
-- the rater's live leases. p_probes names, for each lease it may grant, the probe kind
-- annotation.rules drew for it ('gold', 'catch', 'repeat'; '' for a regular item); a probe is
-- served only while regular items remain, and a probe that cannot be served becomes a regular
-- item. Each pick locks its item (SKIP LOCKED: raters never queue behind each other), and a
-- regular lease is written only if a re-count in a later statement (a fresh snapshot, the
-- item's lock held) still finds room under the overlap: judgments + live leases <= overlap.
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
    v_probe record;
    -- the lease to write: item, its size (a fresh order of sides), kind ('none' for a
    -- regular item), the lease it repeats and the sides it shows (a repeat's are given)
    v_lease_item bigint;
    v_lease_size integer;
    v_lease_kind text;
    v_lease_repeat_of bigint;
    v_lease_sides jsonb;
BEGIN
    SELECT count(*) INTO v_live FROM annotation_assignment l
     WHERE l.rater_id = p_rater AND l.campaign_id = p_campaign AND l.status = 'active'
       AND l.expires_at > clock_timestamp();
    v_want := least(p_target - v_live, p_quota_left - v_live);
    WHILE v_want > 0 AND v_tries < 4 + p_target LOOP
        v_tries := v_tries + 1;
        -- The next regular item (locked): also what tells whether probes may be served. Two
        -- statements for the two serving orders, each walking the item_serving_order index
        -- with a plan kept per connection (one statement ordering by a CASE would sort every
        -- open item on each pick).
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
        v_kind := coalesce(v_probes[v_granted + 1], '');
        v_lease_item := v_item.id;
        v_lease_size := v_item.size;
        v_lease_kind := 'none';
        v_lease_repeat_of := NULL;
        v_lease_sides := NULL;
        IF v_kind IN ('gold', 'catch') THEN
            -- A probe item of that kind the rater does not hold and has not answered, at
            -- random (a probe lease that ran out does not count, as for regular items; the
            -- conditions of one_live_exposure_per_rater, which answers them).
            SELECT i.id, i.size INTO v_probe
              FROM annotation_item i
             WHERE i.campaign_id = p_campaign AND i.probe = v_kind
               AND NOT EXISTS (SELECT 1 FROM annotation_assignment m
                                WHERE m.item_id = i.id AND m.rater_id = p_rater
                                  AND m.probe <> 'repeat' AND m.status <> 'expired')
             ORDER BY random() LIMIT 1;
            IF FOUND THEN
                v_lease_item := v_probe.id;
                v_lease_size := v_probe.size;
                v_lease_kind := v_kind;
            END IF;
        ELSIF v_kind = 'repeat' THEN
            -- One of the rater's own answered regular items, not repeated yet, sides swapped.
            SELECT x.id, x.item_id,
                   (SELECT jsonb_agg(e ORDER BY n DESC)
                      FROM jsonb_array_elements(x."order") WITH ORDINALITY AS t(e, n)) AS sides
              INTO v_probe
              FROM annotation_assignment x
             WHERE x.rater_id = p_rater AND x.campaign_id = p_campaign
               AND x.probe = 'none' AND x.status = 'submitted'
               AND NOT EXISTS (SELECT 1 FROM annotation_assignment r
                                WHERE r.repeat_of_id = x.id AND r.rater_id = p_rater
                                  AND r.campaign_id = p_campaign)
             ORDER BY random() LIMIT 1;
            IF FOUND THEN
                v_lease_item := v_probe.item_id;
                v_lease_kind := 'repeat';
                v_lease_repeat_of := v_probe.id;
                v_lease_sides := v_probe.sides;
            END IF;
        END IF;
        IF v_lease_kind = 'none' THEN
            v_skip := v_skip || v_item.id;
        END IF;
        -- Probes are not part of the overlap. A second tab that took the item a moment
        -- earlier makes this write nothing.
        INSERT INTO annotation_assignment (token, campaign_id, item_id, rater_id, probe,
                                           repeat_of_id, "order", status, leased_at,
                                           heartbeat_at, expires_at)
        SELECT gen_random_uuid(), p_campaign, v_lease_item, p_rater, v_lease_kind,
               v_lease_repeat_of,
               coalesce(v_lease_sides, (SELECT jsonb_agg(g ORDER BY random())
                                          FROM generate_series(0, v_lease_size - 1) g)),
               'active', p_now, p_now, p_expires
         WHERE v_lease_kind <> 'none'
            OR (SELECT i.n_judgments + (SELECT count(*) FROM annotation_assignment l
                                         WHERE l.item_id = i.id AND l.status = 'active'
                                           AND l.expires_at > clock_timestamp()
                                           AND l.probe <> 'repeat')
                  FROM annotation_item i WHERE i.id = v_lease_item) < p_overlap
        ON CONFLICT DO NOTHING;
        IF FOUND THEN
            v_want := v_want - 1;
            v_granted := v_granted + 1;
        ELSIF v_lease_kind <> 'none' THEN
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
