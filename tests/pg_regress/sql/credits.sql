\set ON_ERROR_ROLLBACK on
\set SHOW_CONTEXT never
-- Credits: a key's remaining uses, with an optional daily or monthly refill. Set by
-- issue, update, rotate and set_credits (and an admin's direct UPDATE), shown by
-- key_list, audited; the uses spent are written by the workers only. Usage per outcome.
begin;
SET search_path = api_keys, public;
SET api_keys.argon2_memory_kib = 64;
SET api_keys.argon2_iterations = 1;
CREATE ROLE regress_alice;
CREATE ROLE regress_bob;
CREATE ROLE regress_admin IN ROLE api_keys_admin;

-- What a worker does after verifications: write the uses spent in the key's current
-- period, with triggers off (superuser only).
CREATE FUNCTION pg_temp.spend(key_id uuid, n bigint) RETURNS void
LANGUAGE plpgsql SET session_replication_role = replica AS $$
BEGIN
    UPDATE api_keys.keys k
       SET uses_period = api_keys._credit_period(k.uses_from, k.refill_interval, statement_timestamp()),
           uses_spent = n
     WHERE k.id = key_id;
END $$;

-- the credit period, the next refill and the uses left, at given times (UTC shown)
SELECT label, _credit_period(f, i, at) AT TIME ZONE 'UTC' AS period,
       _next_refill(f, i, at) AT TIME ZONE 'UTC' AS next_refill
  FROM (VALUES
    ('no refill',                    '2026-01-15 10:00+00'::timestamptz, NULL, '2026-03-01 00:00+00'::timestamptz),
    ('daily, the first day',         '2026-01-15 10:00+00', 'daily', '2026-01-15 23:59+00'),
    ('daily, the next day',          '2026-01-15 10:00+00', 'daily', '2026-01-16 00:30+00'),
    ('daily, at midnight UTC',       '2026-01-15 10:00+00', 'daily', '2026-01-17 00:00+00'),
    ('monthly, the first month',     '2026-01-15 10:00+00', 'monthly', '2026-01-31 23:00+00'),
    ('monthly, a later month',       '2026-01-15 10:00+00', 'monthly', '2026-03-20 08:00+00'),
    ('monthly, December',            '2026-01-15 10:00+00', 'monthly', '2026-12-31 23:00+00'),
    ('daily, a clock behind the start', '2026-01-15 10:00+00', 'daily', '2026-01-14 20:00+00')
  ) AS t(label, f, i, at);
-- (in UTC whatever the session's zone, across a change to summer time too)
SET LOCAL TimeZone = 'America/New_York';
SELECT _next_refill('2026-03-07 12:00+00', 'daily', '2026-03-08 12:00+00') = '2026-03-09 00:00+00' AS utc_midnight,
       _credit_period('2026-03-01 12:00+00', 'monthly', '2026-04-01 02:00+00') = '2026-04-01 00:00+00' AS utc_month;
RESET TimeZone;
SELECT label, _remaining_uses(jsonb_populate_record(NULL::api_keys.keys, k), at) AS remaining_uses
  FROM (VALUES
    ('unlimited', '{}'::jsonb, '2026-01-15 12:00+00'::timestamptz),
    ('none spent', '{"uses_granted": 100, "uses_from": "2026-01-15 10:00+00"}', '2026-01-15 12:00+00'),
    ('30 spent', '{"uses_granted": 100, "uses_from": "2026-01-15 10:00+00", "uses_period": "2026-01-15 10:00+00", "uses_spent": 30}', '2026-06-01 00:00+00'),
    ('all spent', '{"uses_granted": 100, "uses_from": "2026-01-15 10:00+00", "uses_period": "2026-01-15 10:00+00", "uses_spent": 100}', '2026-01-15 12:00+00'),
    ('more spent than granted', '{"uses_granted": 100, "uses_from": "2026-01-15 10:00+00", "uses_period": "2026-01-15 10:00+00", "uses_spent": 130}', '2026-01-15 12:00+00'),
    ('daily, 30 spent the first day', '{"uses_granted": 100, "uses_from": "2026-01-15 10:00+00", "refill_amount": 10, "refill_interval": "daily", "uses_period": "2026-01-15 10:00+00", "uses_spent": 30}', '2026-01-15 12:00+00'),
    ('daily, the next day: refilled', '{"uses_granted": 100, "uses_from": "2026-01-15 10:00+00", "refill_amount": 10, "refill_interval": "daily", "uses_period": "2026-01-15 10:00+00", "uses_spent": 30}', '2026-01-16 12:00+00'),
    ('daily, 4 spent of the refill', '{"uses_granted": 100, "uses_from": "2026-01-15 10:00+00", "refill_amount": 10, "refill_interval": "daily", "uses_period": "2026-01-16 00:00+00", "uses_spent": 4}', '2026-01-16 12:00+00'),
    ('daily, the refill overspent', '{"uses_granted": 100, "uses_from": "2026-01-15 10:00+00", "refill_amount": 10, "refill_interval": "daily", "uses_period": "2026-01-16 00:00+00", "uses_spent": 15}', '2026-01-16 12:00+00'),
    ('monthly, a later month', '{"uses_granted": 5, "uses_from": "2026-01-15 10:00+00", "refill_amount": 1000, "refill_interval": "monthly", "uses_period": "2026-01-15 10:00+00", "uses_spent": 5}', '2026-02-02 00:00+00')
  ) AS t(label, k, at);

-- bounds: 22023 naming the field, the bound in the hint; checked before any hashing
SET ROLE regress_alice;
SELECT label, regress.expect_error(format('SELECT api_key_issue(''k'', ''service'', ''development'', %s)', args))
  FROM (VALUES
    ('negative uses', 'remaining_uses => -1'),
    ('too many uses', 'remaining_uses => 1000000000001'),
    ('refill_amount 0', 'remaining_uses => 10, refill_amount => 0, refill_interval => ''daily'''),
    ('refill_amount too large', 'remaining_uses => 10, refill_amount => 1000000000001, refill_interval => ''daily'''),
    ('weekly', 'remaining_uses => 10, refill_amount => 5, refill_interval => ''weekly'''),
    ('Daily', 'remaining_uses => 10, refill_amount => 5, refill_interval => ''Daily'''),
    ('a long interval', format('remaining_uses => 10, refill_amount => 5, refill_interval => %L', repeat('x', 100000))),
    ('amount alone', 'remaining_uses => 10, refill_amount => 5'),
    ('interval alone', 'remaining_uses => 10, refill_interval => ''daily'''),
    ('a refill of unlimited uses', 'refill_amount => 5, refill_interval => ''daily''')
  ) AS t(label, args);
SELECT count(*) AS no_key_issued FROM key_list;
-- at the bounds: accepted
SELECT count(*) AS issued FROM api_key_issue('none left', 'service', 'development', remaining_uses => 0);
SELECT count(*) AS issued FROM api_key_issue('most', 'service', 'development', remaining_uses => 1000000000000,
                                            refill_amount => 1000000000000, refill_interval => 'monthly');
SELECT count(*) AS issued FROM api_key_issue('least refill', 'service', 'development', remaining_uses => 1,
                                            refill_amount => 1, refill_interval => 'daily');
SELECT name, remaining_uses, refill_amount, refill_interval FROM key_list ORDER BY name;

-- issue: key_list shows the credits and the next refill; the row when they started
SELECT id AS k_id, prefix AS k_prefix
  FROM api_key_issue('metered', 'service', 'production', remaining_uses => 100,
                     refill_amount => 50, refill_interval => 'daily') \gset
SELECT id AS u_id FROM api_key_issue('unlimited', 'service', 'production') \gset
SELECT name, remaining_uses, refill_amount, refill_interval,
       refill_at = (date_trunc('day', statement_timestamp() AT TIME ZONE 'UTC') + interval '1 day') AT TIME ZONE 'UTC' AS refill_at_next_utc_midnight,
       owner_rate_limit_per_minute, owner_rate_limit_per_hour
  FROM key_list WHERE id IN (:'k_id', :'u_id') ORDER BY name;
RESET ROLE;
SELECT name, uses_granted, uses_from BETWEEN now() AND clock_timestamp() AS uses_from_now,
       uses_period, uses_spent
  FROM keys WHERE id IN (:'k_id', :'u_id') ORDER BY name;
SELECT details FROM audit_log WHERE key_id = :'k_id' AND action = 'issued';
SELECT details FROM audit_log WHERE key_id = :'u_id' AND action = 'issued';

-- spent uses (as a worker writes them) count against the period; key_list sorts by what is left
SELECT pg_temp.spend(:'k_id', 30);
SET ROLE regress_alice;
SELECT name, remaining_uses FROM key_list WHERE id = :'k_id';
SELECT name, remaining_uses FROM api_key_list(order_by => 'remaining_uses desc');
SELECT name, remaining_uses FROM api_key_list(order_by => 'remaining_uses');
RESET ROLE;

-- only the workers write the uses spent and the owner's limits: an admin may not
-- (column privileges), a superuser's direct writes are kept out by the guard
SET ROLE regress_admin;
SELECT regress.expect_error(format('UPDATE api_keys.keys SET uses_spent = 0 WHERE id = %L', :'k_id'));
SELECT regress.expect_error(format('UPDATE api_keys.keys SET uses_period = NULL WHERE id = %L', :'k_id'));
SELECT regress.expect_error(format('UPDATE api_keys.keys SET uses_from = now() WHERE id = %L', :'k_id'));
SELECT regress.expect_error(format('UPDATE api_keys.keys SET owner_rate_limit_per_minute = 1 WHERE id = %L', :'k_id'));
RESET ROLE;
UPDATE keys SET uses_spent = 0, uses_period = NULL, owner_rate_limit_per_minute = 1 WHERE id = :'k_id';
SELECT uses_granted, uses_spent, uses_period IS NOT NULL AS period_kept, owner_rate_limit_per_minute
  FROM keys WHERE id = :'k_id';

-- update: other settings leave the credits alone
SET ROLE regress_alice;
SELECT name, remaining_uses, refill_amount, refill_interval FROM api_key_update(:'k_id', name => 'metered v2');
RESET ROLE;
SELECT uses_spent FROM keys WHERE id = :'k_id';
-- update: remaining_uses starts a new period, none spent
SET ROLE regress_alice;
SELECT name, remaining_uses, refill_amount, refill_interval FROM api_key_update(:'k_id', remaining_uses => 200);
RESET ROLE;
SELECT uses_granted, uses_from BETWEEN now() AND clock_timestamp() AS uses_from_now, uses_period, uses_spent
  FROM keys WHERE id = :'k_id';
-- update: a new refill alone keeps the uses left (as written)
SELECT pg_temp.spend(:'k_id', 20);
SET ROLE regress_alice;
SELECT remaining_uses, refill_amount, refill_interval FROM api_key_update(:'k_id', refill_amount => 10);
SELECT remaining_uses, refill_amount, refill_interval FROM api_key_update(:'k_prefix', refill_interval => 'monthly');
SELECT refill_at = (date_trunc('month', statement_timestamp() AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC' AS refill_at_next_utc_month
  FROM key_list WHERE id = :'k_id';
-- update: refused credits, the key unchanged
SELECT label, regress.expect_error(format('SELECT api_key_update(%L, %s)', id, args)) FROM (VALUES
    ('negative uses', :'k_id', 'remaining_uses => -5'),
    ('refill_amount 0', :'k_id', 'refill_amount => 0'),
    ('hourly', :'k_id', 'refill_interval => ''hourly'''),
    ('amount alone, unlimited key', :'u_id', 'refill_amount => 5'),
    ('a refill of unlimited uses', :'u_id', 'refill_amount => 5, refill_interval => ''daily'''),
    ('too many uses, by prefix', :'k_prefix', 'remaining_uses => 1000000000001')
  ) AS t(label, id, args);
SELECT name, remaining_uses, refill_amount, refill_interval FROM key_list WHERE id IN (:'k_id', :'u_id') ORDER BY name;
-- update: an unlimited key gets credits
SELECT name, remaining_uses, refill_amount, refill_interval
  FROM api_key_update(:'u_id', remaining_uses => 3, refill_amount => 3, refill_interval => 'daily');
RESET ROLE;
-- each change of the credits is one 'updated' entry: the uses left before, those given
SELECT details FROM audit_log WHERE key_id = :'k_id' AND action = 'updated' ORDER BY id;
SELECT details FROM audit_log WHERE key_id = :'u_id' AND action = 'updated' ORDER BY id;

-- set_credits: all three at once; NULL uses make the key unlimited, without refill
SET ROLE regress_alice;
SELECT name, remaining_uses, refill_amount, refill_interval, refill_at FROM api_key_set_credits(:'u_id', NULL);
SELECT name, remaining_uses, refill_amount, refill_interval, refill_at IS NOT NULL AS has_refill_at
  FROM api_key_set_credits(:'u_id', 10);
SELECT name, remaining_uses, refill_amount, refill_interval FROM api_key_set_credits(:'u_id', 10, 2, 'monthly');
RESET ROLE;
-- the same credits again start a new period: the uses spent are forgotten
SELECT pg_temp.spend(:'u_id', 4);
SET ROLE regress_alice;
SELECT remaining_uses FROM key_list WHERE id = :'u_id';
SELECT remaining_uses FROM api_key_set_credits(:'u_id', 10, 2, 'monthly');
-- by prefix (the key_id text version)
SELECT prefix = :'k_prefix' AS same_key, remaining_uses, refill_amount, refill_interval
  FROM api_key_set_credits(:'k_prefix', 7);
SELECT label, regress.expect_error(stmt) FROM (VALUES
    ('a refill of unlimited uses', format('SELECT api_key_set_credits(%L, NULL, 5, ''daily'')', :'k_id')),
    ('amount alone', format('SELECT api_key_set_credits(%L, 5, 5)', :'k_id')),
    ('too many uses', format('SELECT api_key_set_credits(%L, 1000000000001)', :'k_id')),
    ('unknown key', 'SELECT api_key_set_credits(''00000000-0000-4000-8000-000000000000''::uuid, 5)'),
    ('unknown prefix', 'SELECT api_key_set_credits(''ak_live_AAAAAAAAAAAA'', 5)')
  ) AS t(label, stmt);
RESET ROLE;
-- another owner's key: P0002, as if it did not exist; an admin may
SET ROLE regress_bob;
SELECT regress.expect_error(format('SELECT api_key_set_credits(%L::uuid, 1000)', :'k_id'));
SELECT regress.expect_error(format('SELECT api_key_update(%L::uuid, remaining_uses => 1000)', :'k_id'));
RESET ROLE;
SET ROLE regress_admin;
SELECT name, remaining_uses FROM api_key_set_credits(:'k_id'::uuid, 1000);
RESET ROLE;
SELECT action, actor, details FROM audit_log WHERE key_id = :'k_id' AND action = 'updated' ORDER BY id DESC LIMIT 2;

-- rotate: the new key takes the uses left (as written) and the refill; none spent
SET ROLE regress_alice;
SELECT id AS r_id FROM api_key_issue('rotating', 'service', 'production', remaining_uses => 50,
                                     refill_amount => 20, refill_interval => 'daily') \gset
RESET ROLE;
SELECT pg_temp.spend(:'r_id', 15);
SET ROLE regress_alice;
SELECT id AS r2_id FROM api_key_rotate(:'r_id'::uuid) \gset
SELECT id = :'r2_id' AS new_key, name, status, remaining_uses, refill_amount, refill_interval,
       rotated_from = :'r_id' AS rotated
  FROM key_list WHERE id IN (:'r_id', :'r2_id') ORDER BY id = :'r2_id';
RESET ROLE;
SELECT uses_granted, uses_spent, uses_period FROM keys WHERE id = :'r2_id';
SELECT details->'remaining_uses' AS remaining_uses, details->'refill_amount' AS refill_amount,
       details->'refill_interval' AS refill_interval
  FROM audit_log WHERE key_id = :'r2_id' AND action = 'issued';
-- remaining_uses given: those, by id or by prefix; with a grace the old key keeps its own
SET ROLE regress_alice;
SELECT id AS r3_id FROM api_key_rotate(:'r2_id'::uuid, '1 hour', remaining_uses => 500) \gset
SELECT id = :'r3_id' AS new_key, status, remaining_uses, refill_amount, refill_interval
  FROM key_list WHERE id IN (:'r2_id', :'r3_id') ORDER BY id = :'r3_id';
SELECT prefix AS r3_prefix FROM key_list WHERE id = :'r3_id' \gset
SELECT id AS r4_id FROM api_key_rotate(:'r3_prefix', remaining_uses => 0) \gset
SELECT remaining_uses, refill_amount, refill_interval FROM key_list WHERE id = :'r4_id';
SELECT regress.expect_error(format('SELECT api_key_rotate(%L::uuid, remaining_uses => -1)', :'r4_id'));
-- an unlimited key's successor is unlimited, unless given uses
SELECT id AS v_id FROM api_key_issue('unlimited too', 'service', 'production') \gset
SELECT id AS v2_id FROM api_key_rotate(:'v_id'::uuid) \gset
SELECT remaining_uses, refill_amount, refill_interval FROM key_list WHERE id = :'v2_id';
SELECT id AS v3_id FROM api_key_rotate(:'v2_id'::uuid, remaining_uses => 9) \gset
SELECT remaining_uses, refill_amount, refill_interval FROM key_list WHERE id = :'v3_id';
RESET ROLE;

-- direct UPDATEs by an admin: new credits start a new period; the same bounds (naming
-- the column); revoked and expired keys cannot be changed
SELECT pg_temp.spend(:'r4_id', 0);
SET ROLE regress_admin;
UPDATE api_keys.keys SET uses_granted = 42 WHERE id = :'r4_id';
SELECT remaining_uses, refill_amount, refill_interval FROM api_keys.key_list WHERE id = :'r4_id';
SELECT label, regress.expect_error(format('UPDATE api_keys.keys SET %s WHERE id = %L', sets, :'r4_id')) FROM (VALUES
    ('negative uses', 'uses_granted = -1'),
    ('unlimited with a refill', 'uses_granted = NULL'),
    ('interval alone', 'refill_interval = NULL'),
    ('yearly', 'refill_interval = ''yearly''')
  ) AS t(label, sets);
UPDATE api_keys.keys SET uses_granted = NULL, refill_amount = NULL, refill_interval = NULL WHERE id = :'r4_id';
SELECT remaining_uses, refill_amount, refill_interval, refill_at FROM api_keys.key_list WHERE id = :'r4_id';
SELECT regress.expect_error(format('UPDATE api_keys.keys SET uses_granted = 5 WHERE id = %L', :'r_id'));
SELECT regress.expect_error(format('SELECT api_key_set_credits(%L::uuid, 5)', :'r_id'));
SELECT regress.expect_error(format('SELECT api_key_update(%L::uuid, remaining_uses => 5)', :'r_id'));
RESET ROLE;
SELECT uses_granted, uses_from IS NOT NULL AS has_uses_from, uses_period, uses_spent FROM keys WHERE id = :'r4_id';
SELECT details FROM audit_log WHERE key_id = :'r4_id' AND action = 'updated' ORDER BY id;

-- usage per outcome: the views sum each reason over the servers; deleting a key
-- removes its usage and its credit counts
INSERT INTO usage (key_id, hour, source, verified, rejected, rate_limited, usage_exceeded,
                   invalid_secret, suspended, revoked, expired, ip_not_allowed, insufficient_scope)
VALUES (:'k_id', date_trunc('hour', now()), '11111111-1111-4111-8111-111111111111', 5, 36, 1, 2, 3, 4, 5, 6, 7, 8),
       (:'k_id', date_trunc('hour', now()), '22222222-2222-4222-8222-222222222222', 1, 8, 1, 1, 1, 1, 1, 1, 1, 1),
       (:'u_id', date_trunc('hour', now()), '11111111-1111-4111-8111-111111111111', 2, 0, 0, 0, 0, 0, 0, 0, 0, 0);
SET ROLE regress_alice;
SELECT name, verified, rejected, rate_limited, usage_exceeded, invalid_secret, suspended, revoked,
       expired, ip_not_allowed, insufficient_scope
  FROM usage_by_key ORDER BY name;
SELECT owner, keys, verified, rejected, rate_limited, usage_exceeded, invalid_secret, suspended,
       revoked, expired, ip_not_allowed, insufficient_scope
  FROM usage_by_owner;
RESET ROLE;
SELECT regress.expect_error('INSERT INTO api_keys.usage (key_id, hour, usage_exceeded) VALUES (gen_random_uuid(), now(), -1)');
INSERT INTO credit_use (key_id, period, source, since, spent)
VALUES (:'k_id', now(), '11111111-1111-4111-8111-111111111111', 1, 3),
       (:'u_id', now(), '11111111-1111-4111-8111-111111111111', 1, 4);
SELECT regress.expect_error('INSERT INTO api_keys.credit_use (key_id, period, source, since, spent) VALUES (gen_random_uuid(), now(), gen_random_uuid(), 1, -1)');
SET ROLE regress_alice;
SELECT name FROM api_key_delete(:'k_id'::uuid);
RESET ROLE;
SELECT (SELECT count(*) FROM usage WHERE key_id = :'k_id') AS usage_rows,
       (SELECT count(*) FROM credit_use WHERE key_id = :'k_id') AS credit_rows,
       (SELECT count(*) FROM credit_use WHERE key_id = :'u_id') AS other_keys_credit_rows;
-- the credit counts are the workers': admins read them, nobody else
SET ROLE regress_admin;
SELECT count(*) AS admin_reads FROM api_keys.credit_use;
SELECT regress.expect_error('DELETE FROM api_keys.credit_use');
RESET ROLE;
SET ROLE regress_alice;
SELECT regress.expect_error('SELECT * FROM api_keys.credit_use');
RESET ROLE;
rollback;
