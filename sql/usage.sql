-- Writing usage: one function for every server's worker. A primary's worker calls it
-- in its own database; a standby's worker calls it on the primary (through
-- api_keys.primary_conninfo, as a member of api_keys_standby).
--
-- Each server writes its own totals per key and hour under its source; a row keeps the
-- larger of its total and the one written. So a batch applied twice (its answer lost on
-- the way back, the worker or the standby restarted before it heard) counts once, and
-- a batch applied in part (keys a user has locked are left out) is simply sent again.

-- Counts in one call: at most this many key-hours and last uses (a worker sends 10,000
-- keys, two hours each).
CREATE FUNCTION api_keys._merge_usage(
    system     bigint,
    source     uuid,
    key_ids    uuid[],
    hours      timestamptz[],
    verified   bigint[],
    rejected   bigint[],
    last_ids   uuid[],
    last_at    timestamptz[],
    last_ip    inet[]
) RETURNS TABLE (key_id uuid, gone boolean)
LANGUAGE plpgsql SECURITY DEFINER
-- Writing last use is no edit for keys_guard to judge nor keys_audit to record.
SET session_replication_role = replica
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    counts   integer := coalesce(cardinality(key_ids), 0);
    uses     integer := coalesce(cardinality(last_ids), 0);
    now_tick bigint;
BEGIN
    -- A standby pointed at another cluster would hear its keys are gone.
    IF system IS DISTINCT FROM (SELECT s.system_identifier FROM pg_control_system() s) THEN
        RAISE EXCEPTION 'this server is not the primary of the server sending usage: their system identifiers differ'
            USING ERRCODE = '22023',
                  HINT = 'Point api_keys.primary_conninfo at the primary the standby replicates.';
    END IF;
    IF source IS NULL OR source = '00000000-0000-0000-0000-000000000000'::uuid THEN
        RAISE EXCEPTION 'source must be a server''s usage source, not NULL or the nil uuid'
            USING ERRCODE = '22023', HINT = 'Only api_keys workers call this function.';
    END IF;
    IF counts > 20000 OR uses > 10000 THEN
        RAISE EXCEPTION 'too many counts in one call: % key-hours and % last uses', counts, uses
            USING ERRCODE = '22023', HINT = 'At most 20000 key-hours and 10000 last uses a call.';
    END IF;
    IF coalesce(cardinality(hours), 0) <> counts OR coalesce(cardinality(verified), 0) <> counts
       OR coalesce(cardinality(rejected), 0) <> counts
       OR coalesce(cardinality(last_at), 0) <> uses OR coalesce(cardinality(last_ip), 0) <> uses THEN
        RAISE EXCEPTION 'the arrays of counts, and of last uses, must have the same lengths'
            USING ERRCODE = '22023', HINT = 'Only api_keys workers call this function.';
    END IF;
    IF EXISTS (SELECT FROM unnest(key_ids, hours, verified, rejected) AS c(k, h, v, r)
                WHERE k IS NULL OR h IS NULL OR v IS NULL OR r IS NULL
                   OR v NOT BETWEEN 0 AND 4294967295 OR r NOT BETWEEN 0 AND 4294967295
                   OR NOT isfinite(h) OR date_trunc('hour', h, 'UTC') <> h
                   OR h < date_trunc('hour', now(), 'UTC') - interval '3 hours'
                   OR h > now() + interval '1 hour')
       OR EXISTS (SELECT FROM unnest(last_ids, last_at) AS u(k, a)
                   WHERE k IS NULL OR a IS NULL OR NOT isfinite(a)) THEN
        RAISE EXCEPTION 'counts need a key, a whole UTC hour of the last three and counts from 0 to 4294967295; last uses a key and a finite time'
            USING ERRCODE = '22023', HINT = 'Only api_keys workers call this function.';
    END IF;
    -- The next tick, this row locked until commit: writes become visible in tick order.
    UPDATE api_keys.usage_clock SET tick = usage_clock.tick + 1 RETURNING usage_clock.tick INTO now_tick;

    RETURN QUERY
    WITH batch AS (
        SELECT c.k AS key_id, c.h AS hour, c.v AS verified, c.r AS rejected
          FROM unnest(key_ids, hours, verified, rejected) AS c(k, h, v, r)
    ), used AS (
        -- The latest use of each key; none later than now (a clock ahead of this one).
        SELECT DISTINCT ON (u.k) u.k AS key_id, least(u.a, now()) AS at, u.ip
          FROM unnest(last_ids, last_at, last_ip) AS u(k, a, ip)
         ORDER BY u.k, u.a DESC
    ), wanted AS (
        SELECT b.key_id FROM batch b UNION SELECT u.key_id FROM used u
    ), locked AS (
        -- Keys whose row no user has locked; the others are sent again next round.
        SELECT k.id FROM api_keys.keys k
         WHERE k.id IN (SELECT w.key_id FROM wanted w)
           FOR NO KEY UPDATE OF k SKIP LOCKED
    ), counted AS (
        INSERT INTO api_keys.usage AS u (key_id, hour, source, verified, rejected, tick)
        SELECT b.key_id, b.hour, _merge_usage.source, b.verified, b.rejected, now_tick
          FROM batch b
         WHERE b.key_id IN (SELECT l.id FROM locked l)
        ON CONFLICT ON CONSTRAINT usage_pkey DO UPDATE
           SET verified = greatest(u.verified, EXCLUDED.verified),
               rejected = greatest(u.rejected, EXCLUDED.rejected),
               tick = EXCLUDED.tick
         WHERE u.verified < EXCLUDED.verified OR u.rejected < EXCLUDED.rejected
    ), touched AS (
        UPDATE api_keys.keys k
           SET last_used_at = l.at, last_used_ip = l.ip
          FROM used l
         WHERE k.id = l.key_id
           AND k.id IN (SELECT x.id FROM locked x)
           AND (k.last_used_at IS NULL OR k.last_used_at < l.at)
    )
    SELECT w.key_id, k.id IS NULL
      FROM wanted w LEFT JOIN api_keys.keys k ON k.id = w.key_id
     WHERE k.id IS NULL OR k.id NOT IN (SELECT x.id FROM locked x);
END
$$;

COMMENT ON FUNCTION api_keys._merge_usage(bigint, uuid, uuid[], timestamptz[], bigint[], bigint[], uuid[], timestamptz[], inet[]) IS
    'Workers only: write one server''s usage totals (system: the cluster''s system identifier, checked) (the larger total wins) and last uses; returns the keys left out: locked by a user (gone false, sent again) or with no row (gone true).';
