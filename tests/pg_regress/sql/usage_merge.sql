\set ON_ERROR_ROLLBACK on
\set SHOW_CONTEXT never
-- Usage written per server (api_keys._merge_usage): totals per key, hour and source,
-- the larger total kept (a batch applied twice counts once), ticks in order, bounds
-- checked before any write, and only api_keys_standby (and superusers) may call it.
begin;
SET search_path = api_keys, public;
SET api_keys.argon2_memory_kib = 64;
SET api_keys.argon2_iterations = 1;

CREATE ROLE regress_sender;
GRANT api_keys_standby TO regress_sender;
CREATE ROLE regress_plain;
CREATE ROLE regress_admin;
GRANT api_keys_admin TO regress_admin;

SELECT id AS k_id FROM api_keys.api_key_issue('metered', 'service', 'production') \gset
-- The clock's row locked for the test: no worker's write takes a tick meanwhile.
SELECT tick AS t0 FROM usage_clock FOR UPDATE \gset
SELECT system_identifier AS sys FROM pg_control_system() \gset
-- this hour and the one before (UTC)
SELECT date_trunc('hour', now(), 'UTC') AS h1, date_trunc('hour', now(), 'UTC') - interval '1 hour' AS h0 \gset

-- a standby's batch: two hours of one key, its last use; a key with no row is "gone"
SET ROLE regress_sender;
SELECT * FROM api_keys._merge_usage(:sys, '11111111-1111-4111-8111-111111111111',
    ARRAY[:'k_id', :'k_id', 'aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa']::uuid[],
    ARRAY[:'h0', :'h1', :'h1']::timestamptz[],
    ARRAY[3, 5, 1]::bigint[], ARRAY[1, 0, 0]::bigint[],
    -- 8 outcomes per count: the rejection of h0 was a wrong secret
    ARRAY[0,0,1,0,0,0,0,0, 0,0,0,0,0,0,0,0, 0,0,0,0,0,0,0,0]::bigint[],
    ARRAY[:'k_id']::uuid[], ARRAY[:'h1']::timestamptz[], ARRAY['10.0.0.9']::inet[], '{}', '{}', '{}', '{}');
RESET ROLE;
SELECT hour = :'h1' AS this_hour, verified, rejected, invalid_secret, rate_limited,
       tick = :t0 + 1 AS next_tick
  FROM usage WHERE key_id = :'k_id' ORDER BY hour;
SELECT last_used_at = :'h1' AS last_used, last_used_ip FROM keys WHERE id = :'k_id';

-- the same batch again (its answer was lost): nothing changes, not even the tick; a
-- last use later than now is taken as now
SELECT count(*) AS left_out FROM api_keys._merge_usage(:sys, '11111111-1111-4111-8111-111111111111',
    ARRAY[:'k_id', :'k_id']::uuid[], ARRAY[:'h0', :'h1']::timestamptz[],
    ARRAY[3, 5]::bigint[], ARRAY[1, 0]::bigint[], array_fill(0::bigint, ARRAY[16]),
    ARRAY[:'k_id']::uuid[], ARRAY[now() + interval '50 years']::timestamptz[], ARRAY['10.0.0.8']::inet[], '{}', '{}', '{}', '{}');
SELECT hour = :'h1' AS this_hour, verified, rejected, tick = :t0 + 1 AS same_tick
  FROM usage WHERE key_id = :'k_id' ORDER BY hour;
SELECT last_used_at = now() AS last_used_now, last_used_ip FROM keys WHERE id = :'k_id';

-- a larger total replaces, a smaller one is kept out; another server adds its own row
SELECT count(*) AS left_out FROM api_keys._merge_usage(:sys, '11111111-1111-4111-8111-111111111111',
    ARRAY[:'k_id', :'k_id']::uuid[], ARRAY[:'h0', :'h1']::timestamptz[],
    ARRAY[2, 7]::bigint[], ARRAY[1, 2]::bigint[], array_fill(0::bigint, ARRAY[16]), '{}', '{}', '{}', '{}', '{}', '{}', '{}');
SELECT count(*) AS left_out FROM api_keys._merge_usage(:sys, '22222222-2222-4222-8222-222222222222',
    ARRAY[:'k_id']::uuid[], ARRAY[:'h1']::timestamptz[],
    ARRAY[4294967295]::bigint[], ARRAY[0]::bigint[], array_fill(0::bigint, ARRAY[8]), '{}', '{}', '{}', '{}', '{}', '{}', '{}');
SELECT hour = :'h1' AS this_hour, source, verified, rejected FROM usage WHERE key_id = :'k_id' ORDER BY hour, source;
-- the views sum the servers
SELECT hour = :'h1' AS this_hour, verified, rejected FROM usage_by_key WHERE key_id = :'k_id' ORDER BY hour;

-- outcomes: each column keeps the larger total, like verified and rejected
SELECT count(*) AS left_out FROM api_keys._merge_usage(:sys, '11111111-1111-4111-8111-111111111111',
    ARRAY[:'k_id']::uuid[], ARRAY[:'h1']::timestamptz[], ARRAY[7]::bigint[], ARRAY[9]::bigint[],
    ARRAY[1,2,0,1,1,1,1,2]::bigint[], '{}', '{}', '{}', '{}', '{}', '{}', '{}');
SELECT rate_limited, usage_exceeded, invalid_secret, suspended, revoked, expired, ip_not_allowed,
       insufficient_scope, rejected
  FROM usage WHERE key_id = :'k_id' AND hour = :'h1' AND source = '11111111-1111-4111-8111-111111111111';
SELECT rate_limited, usage_exceeded, insufficient_scope FROM usage_by_key
 WHERE key_id = :'k_id' AND hour = :'h1';

-- credit spending: a total per writer (source, since), the larger kept; the key row
-- carries the sum of its current period
SELECT id AS c_id FROM api_keys.api_key_issue('credited', 'service', 'production', remaining_uses => 100) \gset
SELECT uses_from AS c_from FROM api_keys.keys WHERE id = :'c_id' \gset
SET ROLE regress_sender;
SELECT count(*) AS left_out FROM api_keys._merge_usage(:sys, '11111111-1111-4111-8111-111111111111',
    '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}',
    ARRAY[:'c_id', :'c_id']::uuid[], ARRAY[:'c_from', :'c_from']::timestamptz[], ARRAY[1, 2]::bigint[],
    ARRAY[10, 3]::bigint[]);
SELECT count(*) AS left_out FROM api_keys._merge_usage(:sys, '22222222-2222-4222-8222-222222222222',
    '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}',
    ARRAY[:'c_id']::uuid[], ARRAY[:'c_from']::timestamptz[], ARRAY[1]::bigint[], ARRAY[4]::bigint[]);
-- sent again with a smaller total (a late copy): kept out
SELECT count(*) AS left_out FROM api_keys._merge_usage(:sys, '11111111-1111-4111-8111-111111111111',
    '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}',
    ARRAY[:'c_id']::uuid[], ARRAY[:'c_from']::timestamptz[], ARRAY[1]::bigint[], ARRAY[8]::bigint[]);
RESET ROLE;
SELECT source, since, spent FROM credit_use WHERE key_id = :'c_id' ORDER BY source, since;
SELECT uses_period = :'c_from' AS current_period, uses_spent FROM keys WHERE id = :'c_id';
SELECT remaining_uses FROM key_list WHERE id = :'c_id';
-- spending of a period before the key's current one changes the row no more
SET ROLE regress_sender;
SELECT count(*) AS left_out FROM api_keys._merge_usage(:sys, '11111111-1111-4111-8111-111111111111',
    '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}',
    ARRAY[:'c_id']::uuid[], ARRAY[:'c_from'::timestamptz - interval '1 day']::timestamptz[],
    ARRAY[5]::bigint[], ARRAY[50]::bigint[]);
RESET ROLE;
SELECT uses_period = :'c_from' AS current_period, uses_spent FROM keys WHERE id = :'c_id';

-- bounds, before any write (22023)
SELECT * FROM api_keys._merge_usage(:sys + 1, '11111111-1111-4111-8111-111111111111', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}');
\echo sqlstate :LAST_ERROR_SQLSTATE
SELECT * FROM api_keys._merge_usage(:sys, NULL, '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}');
\echo sqlstate :LAST_ERROR_SQLSTATE
SELECT * FROM api_keys._merge_usage(:sys, '00000000-0000-0000-0000-000000000000', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}');
\echo sqlstate :LAST_ERROR_SQLSTATE
SELECT * FROM api_keys._merge_usage(:sys, '11111111-1111-4111-8111-111111111111',
    ARRAY[:'k_id']::uuid[], '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}');
\echo sqlstate :LAST_ERROR_SQLSTATE
-- not a whole hour; infinity; four hours ago; two hours ahead
SELECT * FROM api_keys._merge_usage(:sys, '11111111-1111-4111-8111-111111111111',
    ARRAY[:'k_id']::uuid[], ARRAY[:'h1'::timestamptz + interval '30 minutes'], '{1}', '{0}', array_fill(0::bigint, ARRAY[8]), '{}', '{}', '{}', '{}', '{}', '{}', '{}');
\echo sqlstate :LAST_ERROR_SQLSTATE
SELECT * FROM api_keys._merge_usage(:sys, '11111111-1111-4111-8111-111111111111',
    ARRAY[:'k_id']::uuid[], ARRAY['infinity']::timestamptz[], '{1}', '{0}', array_fill(0::bigint, ARRAY[8]), '{}', '{}', '{}', '{}', '{}', '{}', '{}');
\echo sqlstate :LAST_ERROR_SQLSTATE
SELECT * FROM api_keys._merge_usage(:sys, '11111111-1111-4111-8111-111111111111',
    ARRAY[:'k_id']::uuid[], ARRAY[:'h1'::timestamptz - interval '4 hours'], '{1}', '{0}', array_fill(0::bigint, ARRAY[8]), '{}', '{}', '{}', '{}', '{}', '{}', '{}');
\echo sqlstate :LAST_ERROR_SQLSTATE
SELECT * FROM api_keys._merge_usage(:sys, '11111111-1111-4111-8111-111111111111',
    ARRAY[:'k_id']::uuid[], ARRAY[:'h1'::timestamptz + interval '2 hours'], '{1}', '{0}', array_fill(0::bigint, ARRAY[8]), '{}', '{}', '{}', '{}', '{}', '{}', '{}');
\echo sqlstate :LAST_ERROR_SQLSTATE
-- counts below 0 or above 4294967295, NULLs, a last use at infinity
SELECT * FROM api_keys._merge_usage(:sys, '11111111-1111-4111-8111-111111111111',
    ARRAY[:'k_id']::uuid[], ARRAY[:'h1']::timestamptz[], '{-1}', '{0}', array_fill(0::bigint, ARRAY[8]), '{}', '{}', '{}', '{}', '{}', '{}', '{}');
\echo sqlstate :LAST_ERROR_SQLSTATE
SELECT * FROM api_keys._merge_usage(:sys, '11111111-1111-4111-8111-111111111111',
    ARRAY[:'k_id']::uuid[], ARRAY[:'h1']::timestamptz[], '{4294967296}', '{0}', array_fill(0::bigint, ARRAY[8]), '{}', '{}', '{}', '{}', '{}', '{}', '{}');
\echo sqlstate :LAST_ERROR_SQLSTATE
SELECT * FROM api_keys._merge_usage(:sys, '11111111-1111-4111-8111-111111111111',
    ARRAY[NULL]::uuid[], ARRAY[:'h1']::timestamptz[], '{1}', '{0}', array_fill(0::bigint, ARRAY[8]), '{}', '{}', '{}', '{}', '{}', '{}', '{}');
\echo sqlstate :LAST_ERROR_SQLSTATE
SELECT * FROM api_keys._merge_usage(:sys, '11111111-1111-4111-8111-111111111111',
    '{}', '{}', '{}', '{}', '{}', ARRAY[:'k_id']::uuid[], ARRAY[NULL]::timestamptz[], ARRAY[NULL]::inet[], '{}', '{}', '{}', '{}');
\echo sqlstate :LAST_ERROR_SQLSTATE
SELECT * FROM api_keys._merge_usage(:sys, '11111111-1111-4111-8111-111111111111',
    '{}', '{}', '{}', '{}', '{}', ARRAY[:'k_id']::uuid[], ARRAY['infinity']::timestamptz[], ARRAY[NULL]::inet[], '{}', '{}', '{}', '{}');
\echo sqlstate :LAST_ERROR_SQLSTATE
SELECT * FROM api_keys._merge_usage(:sys, '11111111-1111-4111-8111-111111111111',
    array_fill(:'k_id'::uuid, ARRAY[20001]), array_fill(:'h1'::timestamptz, ARRAY[20001]),
    array_fill(1::bigint, ARRAY[20001]), array_fill(0::bigint, ARRAY[20001]), array_fill(0::bigint, ARRAY[160008]), '{}', '{}', '{}', '{}', '{}', '{}', '{}');
\echo sqlstate :LAST_ERROR_SQLSTATE
-- outcomes of another length; a credit count below 0, of no writer, at infinity
SELECT * FROM api_keys._merge_usage(:sys, '11111111-1111-4111-8111-111111111111',
    ARRAY[:'k_id']::uuid[], ARRAY[:'h1']::timestamptz[], '{1}', '{0}', '{0,0,0}', '{}', '{}', '{}', '{}', '{}', '{}', '{}');
\echo sqlstate :LAST_ERROR_SQLSTATE
SELECT * FROM api_keys._merge_usage(:sys, '11111111-1111-4111-8111-111111111111',
    '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}',
    ARRAY[:'c_id']::uuid[], ARRAY[:'c_from']::timestamptz[], ARRAY[1]::bigint[], ARRAY[-1]::bigint[]);
\echo sqlstate :LAST_ERROR_SQLSTATE
SELECT * FROM api_keys._merge_usage(:sys, '11111111-1111-4111-8111-111111111111',
    '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}',
    ARRAY[:'c_id']::uuid[], ARRAY[:'c_from']::timestamptz[], ARRAY[NULL]::bigint[], ARRAY[1]::bigint[]);
\echo sqlstate :LAST_ERROR_SQLSTATE
SELECT * FROM api_keys._merge_usage(:sys, '11111111-1111-4111-8111-111111111111',
    '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}',
    ARRAY[:'c_id']::uuid[], ARRAY['infinity']::timestamptz[], ARRAY[1]::bigint[], ARRAY[1]::bigint[]);
\echo sqlstate :LAST_ERROR_SQLSTATE
SELECT tick = :t0 + 9 AS no_tick_taken FROM usage_clock;

-- only api_keys_standby may write usage; nobody else reads or changes the clock
SET ROLE regress_plain;
SELECT * FROM api_keys._merge_usage(:sys, '11111111-1111-4111-8111-111111111111', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}');
\echo sqlstate :LAST_ERROR_SQLSTATE
SELECT tick FROM usage_clock;
\echo sqlstate :LAST_ERROR_SQLSTATE
RESET ROLE;
SET ROLE regress_admin;
SELECT * FROM api_keys._merge_usage(:sys, '11111111-1111-4111-8111-111111111111', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}');
\echo sqlstate :LAST_ERROR_SQLSTATE
UPDATE usage_clock SET tick = 0;
\echo sqlstate :LAST_ERROR_SQLSTATE
RESET ROLE;
SET ROLE regress_sender;
SELECT tick FROM usage_clock;
\echo sqlstate :LAST_ERROR_SQLSTATE
SELECT count(*) FROM usage;
\echo sqlstate :LAST_ERROR_SQLSTATE
SHOW api_keys.primary_conninfo;
\echo sqlstate :LAST_ERROR_SQLSTATE
RESET ROLE;
rollback;

