-- Writing usage: one function for every server's worker. A primary's worker calls it
-- in its own database; a standby's worker calls it on the primary (through
-- api_keys.primary_conninfo, as a member of api_keys_standby).
--
-- Each server writes its own totals per key and hour under its source; a row keeps the
-- larger of its total and the one written. So a batch applied twice (its answer lost on
-- the way back, the worker or the standby restarted before it heard) counts once, and
-- a batch applied in part (keys a user has locked are left out) is simply sent again.

-- Counts in one call: at most this many key-hours, last uses and credit counts (a
-- worker sends 10,000 keys, two hours each).
--
-- Rejections are also written per reason (outcomes: 8 per key-hour, in the order of
-- api_keys.usage's columns rate_limited … insufficient_scope). Credits are written per
-- writer, a server's source and the time its count began (since): a key's state made
-- again, or a server back after a crash, writes beside its earlier totals instead of
-- over them. Each key's row then carries the sum of its current period (uses_period,
-- uses_spent), which verification reads with the row.
CREATE FUNCTION api_keys._merge_usage(
    system        bigint,
    source        uuid,
    key_ids       uuid[],
    hours         timestamptz[],
    verified      bigint[],
    rejected      bigint[],
    outcomes      bigint[],
    last_ids      uuid[],
    last_at       timestamptz[],
    last_ip       inet[],
    spent_ids     uuid[],
    spent_periods timestamptz[],
    spent_since   bigint[],
    spent         bigint[]
) RETURNS TABLE (key_id uuid, gone boolean)
LANGUAGE plpgsql SECURITY DEFINER
-- Writing last use and spending is no edit for keys_guard to judge nor keys_audit to
-- record.
SET session_replication_role = replica
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    counts   integer := coalesce(cardinality(key_ids), 0);
    uses     integer := coalesce(cardinality(last_ids), 0);
    credits  integer := coalesce(cardinality(spent_ids), 0);
    now_tick bigint;
    got      uuid[];
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
    IF counts > 20000 OR uses > 10000 OR credits > 10000 THEN
        RAISE EXCEPTION 'too many counts in one call: % key-hours, % last uses and % credit counts', counts, uses, credits
            USING ERRCODE = '22023', HINT = 'At most 20000 key-hours, 10000 last uses and 10000 credit counts a call.';
    END IF;
    IF coalesce(cardinality(hours), 0) <> counts OR coalesce(cardinality(verified), 0) <> counts
       OR coalesce(cardinality(rejected), 0) <> counts
       OR coalesce(cardinality(outcomes), 0) <> counts * 8
       OR coalesce(cardinality(last_at), 0) <> uses OR coalesce(cardinality(last_ip), 0) <> uses
       OR coalesce(cardinality(spent_periods), 0) <> credits
       OR coalesce(cardinality(spent_since), 0) <> credits
       OR coalesce(cardinality(spent), 0) <> credits THEN
        RAISE EXCEPTION 'the arrays of counts (and 8 outcomes each), of last uses, and of credit counts must have the same lengths'
            USING ERRCODE = '22023', HINT = 'Only api_keys workers call this function.';
    END IF;
    IF EXISTS (SELECT FROM unnest(key_ids, hours, verified, rejected) AS c(k, h, v, r)
                WHERE k IS NULL OR h IS NULL OR v IS NULL OR r IS NULL
                   OR v NOT BETWEEN 0 AND 4294967295 OR r NOT BETWEEN 0 AND 4294967295
                   OR NOT isfinite(h) OR date_trunc('hour', h, 'UTC') <> h
                   OR h < date_trunc('hour', now(), 'UTC') - interval '3 hours'
                   OR h > now() + interval '1 hour')
       OR EXISTS (SELECT FROM unnest(outcomes) AS o(n) WHERE n IS NULL OR n NOT BETWEEN 0 AND 4294967295)
       OR EXISTS (SELECT FROM unnest(last_ids, last_at) AS u(k, a)
                   WHERE k IS NULL OR a IS NULL OR NOT isfinite(a))
       OR EXISTS (SELECT FROM unnest(spent_ids, spent_periods, spent_since, spent) AS s(k, p, w, n)
                   WHERE k IS NULL OR p IS NULL OR NOT isfinite(p) OR w IS NULL OR n IS NULL OR n < 0) THEN
        RAISE EXCEPTION 'counts need a key, a whole UTC hour of the last three and counts from 0 to 4294967295; last uses a key and a finite time; credit counts a key, a finite period, a writer and a count from 0'
            USING ERRCODE = '22023', HINT = 'Only api_keys workers call this function.';
    END IF;
    -- The next tick, this row locked until commit: writes become visible in tick order.
    UPDATE api_keys.usage_clock SET tick = usage_clock.tick + 1 RETURNING usage_clock.tick INTO now_tick;

    -- Keys whose row no user has locked; the others are sent again next round.
    SELECT array_agg(l.id) INTO got
      FROM (SELECT k.id FROM api_keys.keys k
             WHERE k.id IN (SELECT unnest(key_ids) UNION SELECT unnest(last_ids)
                            UNION SELECT unnest(spent_ids))
               FOR NO KEY UPDATE OF k SKIP LOCKED) l;
    -- A set, not an array to search: each membership test below is hashed.
    got := coalesce(got, '{}');

    WITH batch AS (
        SELECT c.k AS key_id, c.h AS hour, c.v AS verified, c.r AS rejected,
               (c.n - 1) * 8 AS o
          FROM unnest(key_ids, hours, verified, rejected) WITH ORDINALITY AS c(k, h, v, r, n)
    ), counted AS (
        INSERT INTO api_keys.usage AS u (key_id, hour, source, verified, rejected, tick,
                                         rate_limited, usage_exceeded, invalid_secret, suspended,
                                         revoked, expired, ip_not_allowed, insufficient_scope)
        SELECT b.key_id, b.hour, _merge_usage.source, b.verified, b.rejected, now_tick,
               outcomes[b.o + 1], outcomes[b.o + 2], outcomes[b.o + 3], outcomes[b.o + 4],
               outcomes[b.o + 5], outcomes[b.o + 6], outcomes[b.o + 7], outcomes[b.o + 8]
          FROM batch b
         WHERE b.key_id IN (SELECT unnest(got))
        ON CONFLICT ON CONSTRAINT usage_pkey DO UPDATE
           SET verified = greatest(u.verified, EXCLUDED.verified),
               rejected = greatest(u.rejected, EXCLUDED.rejected),
               rate_limited = greatest(u.rate_limited, EXCLUDED.rate_limited),
               usage_exceeded = greatest(u.usage_exceeded, EXCLUDED.usage_exceeded),
               invalid_secret = greatest(u.invalid_secret, EXCLUDED.invalid_secret),
               suspended = greatest(u.suspended, EXCLUDED.suspended),
               revoked = greatest(u.revoked, EXCLUDED.revoked),
               expired = greatest(u.expired, EXCLUDED.expired),
               ip_not_allowed = greatest(u.ip_not_allowed, EXCLUDED.ip_not_allowed),
               insufficient_scope = greatest(u.insufficient_scope, EXCLUDED.insufficient_scope),
               tick = EXCLUDED.tick
         WHERE u.verified < EXCLUDED.verified OR u.rejected < EXCLUDED.rejected
            OR u.rate_limited < EXCLUDED.rate_limited OR u.usage_exceeded < EXCLUDED.usage_exceeded
            OR u.invalid_secret < EXCLUDED.invalid_secret OR u.suspended < EXCLUDED.suspended
            OR u.revoked < EXCLUDED.revoked OR u.expired < EXCLUDED.expired
            OR u.ip_not_allowed < EXCLUDED.ip_not_allowed
            OR u.insufficient_scope < EXCLUDED.insufficient_scope
         RETURNING 1
    )
    INSERT INTO api_keys.credit_use AS c (key_id, period, source, since, spent, tick)
    SELECT s.k, s.p, _merge_usage.source, s.w, s.n, now_tick
      FROM unnest(spent_ids, spent_periods, spent_since, spent) AS s(k, p, w, n)
     WHERE s.k IN (SELECT unnest(got))
    ON CONFLICT ON CONSTRAINT credit_use_pkey DO UPDATE
       SET spent = greatest(c.spent, EXCLUDED.spent), tick = EXCLUDED.tick
     WHERE c.spent < EXCLUDED.spent;

    -- Each key's last use, and the sum of its current credit period over every writer.
    WITH used AS (
        -- The latest use of each key; none later than now (a clock ahead of this one).
        SELECT DISTINCT ON (u.k) u.k AS key_id, least(u.a, now()) AS at, u.ip
          FROM unnest(last_ids, last_at, last_ip) AS u(k, a, ip)
         WHERE u.k IN (SELECT unnest(got))
         ORDER BY u.k, u.a DESC
    ), totals AS (
        SELECT c.key_id, c.period, sum(c.spent)::bigint AS spent
          FROM api_keys.credit_use c
         WHERE (c.key_id, c.period) IN (SELECT s.k, s.p FROM unnest(spent_ids, spent_periods) AS s(k, p)
                                         WHERE s.k IN (SELECT unnest(got)))
         GROUP BY c.key_id, c.period
    ), latest AS (
        SELECT DISTINCT ON (t.key_id) t.key_id, t.period, t.spent
          FROM totals t ORDER BY t.key_id, t.period DESC
    )
    UPDATE api_keys.keys k
       SET last_used_at = CASE WHEN x.newer_use THEN x.at ELSE k.last_used_at END,
           last_used_ip = CASE WHEN x.newer_use THEN x.ip ELSE k.last_used_ip END,
           uses_period = CASE WHEN x.current THEN x.period ELSE k.uses_period END,
           uses_spent = CASE WHEN x.current THEN x.spent ELSE k.uses_spent END
      FROM (SELECT coalesce(l.key_id, t.key_id) AS key_id, l.at, l.ip, t.period, t.spent,
                   l.at IS NOT NULL AND (k2.last_used_at IS NULL OR k2.last_used_at < l.at) AS newer_use,
                   t.period IS NOT NULL AND t.period >= k2.uses_from
                       AND t.period >= coalesce(k2.uses_period, '-infinity') AS current
              FROM used l FULL JOIN latest t ON t.key_id = l.key_id
              JOIN api_keys.keys k2 ON k2.id = coalesce(l.key_id, t.key_id)) x
     WHERE k.id = x.key_id AND (x.newer_use OR x.current);

    -- The spending of periods before a key's current one counts no more: it goes, so
    -- the table holds the current periods only (however often credits are reset).
    DELETE FROM api_keys.credit_use c
     USING api_keys.keys k
     WHERE c.key_id = k.id AND k.id IN (SELECT unnest(got))
       AND c.key_id IN (SELECT unnest(spent_ids))
       AND (k.uses_granted IS NULL
            OR c.period < api_keys._credit_period(k.uses_from, k.refill_interval, now()));

    RETURN QUERY
    WITH wanted AS (
        SELECT unnest(key_ids) AS key_id UNION SELECT unnest(last_ids) UNION SELECT unnest(spent_ids)
    )
    SELECT w.key_id, k.id IS NULL
      FROM wanted w LEFT JOIN api_keys.keys k ON k.id = w.key_id
     WHERE w.key_id NOT IN (SELECT unnest(got));
END
$$;

COMMENT ON FUNCTION api_keys._merge_usage(bigint, uuid, uuid[], timestamptz[], bigint[], bigint[], bigint[], uuid[], timestamptz[], inet[], uuid[], timestamptz[], bigint[], bigint[]) IS
    'Workers only: write one server''s usage totals per outcome (system: the cluster''s system identifier, checked) (the larger total wins), last uses and credit spending; returns the keys left out: locked by a user (gone false, sent again) or with no row (gone true).';
