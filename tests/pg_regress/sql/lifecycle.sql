\set ON_ERROR_ROLLBACK on
\set SHOW_CONTEXT never
-- Lifecycle: suspend, reactivate, revoke, set_status, delete, rotate, update, and direct
-- UPDATEs of api_keys.keys, which obey the same transition rules.
begin;
SET search_path = api_keys, public;
SET api_keys.argon2_memory_kib = 64;
SET api_keys.argon2_iterations = 1;

-- A fresh key in a given state, and one lifecycle statement tried on it: the key's
-- status afterwards, or the error (random parts masked).
CREATE FUNCTION pg_temp.fresh(state text) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    k uuid;
BEGIN
    SELECT id INTO k FROM api_keys.api_key_issue('matrix ' || state, 'service', 'production',
                                                 expires_at => now() + interval '1 day');
    CASE state
    WHEN 'active' THEN NULL;
    WHEN 'suspended' THEN PERFORM api_keys.api_key_suspend(k);
    WHEN 'revoked' THEN PERFORM api_keys.api_key_revoke(k, 'matrix');
    WHEN 'expired' THEN PERFORM api_keys.api_key_set_status(k, 'expired');
    WHEN 'active, past expiry' THEN
        PERFORM regress.backdate(k, interval '1 minute');
    WHEN 'suspended, past expiry' THEN
        PERFORM api_keys.api_key_suspend(k);
        PERFORM regress.backdate(k, interval '1 minute');
    END CASE;
    RETURN k;
END $$;
CREATE FUNCTION pg_temp.attempt(state text, stmt text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    k uuid := pg_temp.fresh(state);
    result text := regress.expect_error(format(stmt, k));
BEGIN
    IF result = 'no error' THEN
        SELECT coalesce('-> ' || (SELECT status::text FROM api_keys.key_list WHERE id = k), '-> (deleted)')
          INTO result;
    END IF;
    RETURN result;
END $$;

-- the starting states, as key_list shows them (past expires_at is effectively expired)
CREATE TEMP TABLE states AS
SELECT s.state, s.n, pg_temp.fresh(s.state) AS id
  FROM unnest(ARRAY['active', 'suspended', 'revoked', 'expired', 'active, past expiry',
                    'suspended, past expiry']) WITH ORDINALITY AS s(state, n);
SELECT s.state, l.status AS effective, k.status AS stored
  FROM states s JOIN key_list l ON l.id = s.id JOIN keys k ON k.id = s.id
 ORDER BY s.n;

-- every transition from every state: allowed ones give the new status, refused ones
-- 55000 saying why (revoked and expired are terminal)
SELECT s.state, o.op, pg_temp.attempt(s.state, o.stmt) AS result
  FROM unnest(ARRAY['active', 'suspended', 'revoked', 'expired', 'active, past expiry',
                    'suspended, past expiry']) WITH ORDINALITY AS s(state, n),
       (VALUES (1, 'suspend', 'SELECT api_keys.api_key_suspend(%L)'),
               (2, 'reactivate', 'SELECT api_keys.api_key_reactivate(%L)'),
               (3, 'revoke', 'SELECT api_keys.api_key_revoke(%L, ''matrix'')'),
               (4, 'set_status active', 'SELECT api_keys.api_key_set_status(%L, ''active'')'),
               (5, 'set_status suspended', 'SELECT api_keys.api_key_set_status(%L, ''suspended'')'),
               (6, 'set_status revoked', 'SELECT api_keys.api_key_set_status(%L, ''revoked'', ''matrix'')'),
               (7, 'set_status expired', 'SELECT api_keys.api_key_set_status(%L, ''expired'')'),
               (8, 'rotate', 'SELECT api_keys.api_key_rotate(%L)'),
               (9, 'rotate with grace', 'SELECT api_keys.api_key_rotate(%L, ''1 hour'')'),
               (10, 'update', 'SELECT api_keys.api_key_update(%L, name => ''renamed'')'),
               (11, 'delete', 'SELECT api_keys.api_key_delete(%L)')) AS o(m, op, stmt)
 ORDER BY s.n, o.m;

-- suspend keeps its reason; reactivate clears it; each returns the key's key_list row
SELECT id AS k_id, prefix AS k_prefix FROM api_key_issue('lifecycle', 'service', 'production') \gset
SELECT id = :'k_id' AS same_key, prefix = :'k_prefix' AS same_prefix, name, status, status_reason
  FROM api_key_suspend(:'k_id', '  investigating  ');
SELECT status, status_reason, status_changed_at = now() AS changed_now FROM keys WHERE id = :'k_id';
SELECT status, status_reason FROM api_key_reactivate(:'k_id');
SELECT status, status_reason FROM api_key_suspend(:'k_id');
SELECT status, status_reason FROM api_key_set_status(:'k_id', 'active');

-- revoke requires a reason (22023), whatever the key
SELECT regress.expect_error(format('SELECT api_keys.api_key_revoke(%L, NULL)', :'k_id'));
SELECT regress.expect_error(format('SELECT api_keys.api_key_revoke(%L, %L)', :'k_id', ''));
SELECT regress.expect_error(format('SELECT api_keys.api_key_revoke(%L, %L)', :'k_id', '   '));
SELECT regress.expect_error(format('SELECT api_keys.api_key_set_status(%L, %L)', :'k_id', 'revoked'));
SELECT regress.expect_error(format('SELECT api_keys.api_key_set_status(%L, %L, %L)', :'k_id', 'revoked', ''));
SELECT status FROM key_list WHERE id = :'k_id';
SELECT status, status_reason FROM api_key_revoke(:'k_id', 'leaked in a public repository');

-- the refusal messages in full: revoked and expired are terminal, and say so
SELECT regress.expect_error(format('SELECT api_keys.api_key_reactivate(%L)', :'k_id'));
SELECT regress.expect_error(format('SELECT api_keys.api_key_revoke(%L, %L)', :'k_id', 'again'));
SELECT regress.expect_error(format('SELECT api_keys.api_key_rotate(%L)', :'k_id'));
SELECT regress.expect_error(format('SELECT api_keys.api_key_update(%L, name => %L)', :'k_id', 'x'));
SELECT id AS x_id FROM api_key_issue('to expire', 'service', 'production') \gset
SELECT status FROM api_key_set_status(:'x_id', 'expired');
SELECT regress.expect_error(format('SELECT api_keys.api_key_reactivate(%L)', :'x_id'));
SELECT regress.expect_error(format('SELECT api_keys.api_key_rotate(%L)', :'x_id'));
SELECT regress.expect_error(format('SELECT api_keys.api_key_set_status(%L, %L)', :'x_id', 'expired'));
SELECT regress.expect_error(format('SELECT api_keys.api_key_update(%L, expires_at => %L)', :'x_id', 'infinity'));
-- an expired key can still be revoked
SELECT status, status_reason FROM api_key_revoke(:'x_id', 'cleanup');

-- set_status: NULL status is refused (22023); 'expired' ends the key now
SELECT id AS s_id FROM api_key_issue('set_status', 'service', 'production',
                                     expires_at => now() + interval '30 days') \gset
SELECT regress.expect_error(format('SELECT api_keys.api_key_set_status(%L, NULL)', :'s_id'));
SELECT status, status_reason, expires_at = now() AS ends_now
  FROM api_key_set_status(:'s_id', 'expired', 'project over');
SELECT status AS stored_status FROM keys WHERE id = :'s_id';
-- a key without an expiry gets one (now) when set to expired
SELECT id AS s2_id FROM api_key_issue('set_status never', 'service', 'production') \gset
SELECT status, expires_at = now() AS ends_now FROM api_key_set_status(:'s2_id', 'expired');
-- set_status to a suspended key, and back, through the one-call form
SELECT id AS s3_id FROM api_key_issue('set_status suspend', 'service', 'production') \gset
SELECT status, status_reason FROM api_key_set_status(:'s3_id', 'suspended', 'billing');
SELECT regress.expect_error(format('SELECT api_keys.api_key_set_status(%L, %L)', :'s3_id', 'suspended'));
SELECT status, status_reason FROM api_key_set_status(:'s3_id', 'revoked', 'fraud');

-- an unknown key_id raises P0002 in every function; a NULL key_id 22023
SELECT f, regress.expect_error(format(stmt, '00000000-0000-4000-8000-000000000000'))
  FROM (VALUES ('suspend', 'SELECT api_keys.api_key_suspend(%L)'),
               ('reactivate', 'SELECT api_keys.api_key_reactivate(%L)'),
               ('revoke', 'SELECT api_keys.api_key_revoke(%L, ''why'')'),
               ('set_status', 'SELECT api_keys.api_key_set_status(%L, ''suspended'')'),
               ('delete', 'SELECT api_keys.api_key_delete(%L)'),
               ('rotate', 'SELECT api_keys.api_key_rotate(%L)'),
               ('update', 'SELECT api_keys.api_key_update(%L, name => ''x'')')) AS t(f, stmt);
SELECT regress.expect_error('SELECT api_keys.api_key_suspend(NULL)');
SELECT regress.expect_error('SELECT * FROM api_keys.api_key_rotate(NULL)');

-- delete: returns the row, removes it, the audit log keeps the key's history
SELECT id AS d_id, key AS d FROM api_key_issue('to delete', 'service', 'production') \gset
SELECT status FROM api_key_suspend(:'d_id', 'about to go');
SELECT name, status FROM api_key_delete(:'d_id');
SELECT count(*) AS in_keys FROM keys WHERE id = :'d_id';
SELECT count(*) AS in_key_list FROM key_list WHERE id = :'d_id';
SELECT action, old_status, new_status, reason FROM audit_log WHERE key_id = :'d_id' ORDER BY id;
SELECT reason FROM api_key_verify(:'d');
SELECT regress.expect_error(format('SELECT api_keys.api_key_delete(%L)', :'d_id'));
-- a revoked key can be deleted too
SELECT name, status FROM api_key_delete(:'k_id');

-- rotate with grace 0: a new key with the same settings, rotated_from set; the old key
-- is revoked at once
SELECT id AS o_id, key AS o, prefix AS o_prefix
  FROM api_key_issue('rotating', 'user', 'staging', ARRAY['runs:read', 'projects/1/*:write'],
                     description => 'to rotate', expires_at => now() + interval '90 days',
                     allowed_cidrs => ARRAY['10.0.0.0/8']::cidr[], owner => 'someone',
                     rate_limit_per_minute => 7, rate_limit_per_hour => 70,
                     metadata => '{"a": 1}') \gset
UPDATE keys SET last_used_at = now() - interval '2 days', last_used_ip = '10.0.0.1' WHERE id = :'o_id';
SELECT id AS n_id, key AS n, prefix AS n_prefix, expires_at = now() + interval '90 days' AS returned_expiry
  FROM api_key_rotate(:'o_id') \gset
SELECT :'returned_expiry' AS returned_expiry, :'n_id' <> :'o_id' AS new_id,
       :'n_prefix' <> :'o_prefix' AS new_prefix, :'n' <> :'o' AS new_key;
SELECT (n.name, n.description, n.key_type, n.environment, n.owner, n.scopes, n.allowed_cidrs,
        n.expires_at, n.rate_limit_per_minute, n.rate_limit_per_hour, n.metadata)
       IS NOT DISTINCT FROM
       (o.name, o.description, o.key_type, o.environment, o.owner, o.scopes, o.allowed_cidrs,
        o.expires_at, o.rate_limit_per_minute, o.rate_limit_per_hour, o.metadata) AS same_settings,
       n.rotated_from = o.id AS rotated_from_old, n.status, n.last_used_at, n.last_used_ip,
       o.status AS old_status, o.status_reason = 'rotated to ' || :'n_prefix' AS old_reason_names_new
  FROM key_list n, key_list o WHERE n.id = :'n_id' AND o.id = :'o_id';
SELECT reason FROM api_key_verify(:'o', '10.0.0.1');
SELECT valid, reason, key_id = :'n_id' AS new_id FROM api_key_verify(:'n', '10.0.0.1');

-- rotate with a grace period: the old key expires at now() + grace and works until then
SELECT id AS g_id, key AS g FROM api_key_issue('grace', 'service', 'production') \gset
SELECT id AS g2_id, key AS g2, expires_at IS NULL AS g2_never FROM api_key_rotate(:'g_id', '1 hour') \gset
SELECT :'g2_never' AS new_key_never_expires;
-- (grace counts from the rotating statement, which ran after this transaction began)
SELECT status, status_reason,
       expires_at > now() + interval '1 hour'
       AND expires_at < statement_timestamp() + interval '1 hour' AS expires_after_grace
  FROM key_list WHERE id = :'g_id';
SELECT rotated_from = :'g_id' AS rotated_from_old, status, expires_at FROM key_list WHERE id = :'g2_id';
SELECT valid, reason FROM api_key_verify(:'g');
SELECT valid, reason FROM api_key_verify(:'g2');
-- once the grace period is over, the old key is expired; the new one still works
SELECT regress.backdate(:'g_id', interval '1 second');
SELECT reason FROM api_key_verify(:'g');
SELECT reason FROM api_key_verify(:'g2');
-- a grace longer than the remaining life keeps the earlier expiry: least(expires_at, now() + grace)
SELECT id AS h_id FROM api_key_issue('short-lived', 'service', 'production',
                                     expires_at => now() + interval '10 minutes') \gset
SELECT expires_at = now() + interval '10 minutes' AS new_keeps_expiry FROM api_key_rotate(:'h_id', '1 day');
SELECT status, expires_at = now() + interval '10 minutes' AS old_keeps_expiry FROM key_list WHERE id = :'h_id';
-- a rotated key (still active in its grace period) can be rotated again
SELECT count(*) AS rotated_again FROM api_key_rotate(:'g2_id', '5 minutes');
-- grace must be zero or positive
SELECT regress.expect_error(format('SELECT api_keys.api_key_rotate(%L, %L)', :'h_id', '-1 minute'));
SELECT regress.expect_error(format('SELECT api_keys.api_key_rotate(%L, NULL)', :'h_id'));
-- a grace shorter than the transaction's age is still in the future (statement time)
SELECT pg_sleep(0.05);
SELECT count(*) AS rotated_late_in_a_transaction FROM api_key_rotate(:'h_id', '10 milliseconds');

-- update: NULL leaves a field unchanged
SELECT id AS u_id, prefix AS u_prefix
  FROM api_key_issue('before', 'service', 'production', ARRAY['runs:read'],
                     description => 'desc', expires_at => now() + interval '10 days',
                     allowed_cidrs => ARRAY['10.0.0.0/8']::cidr[],
                     rate_limit_per_minute => 10, rate_limit_per_hour => 100,
                     metadata => '{"k": "v"}') \gset
SELECT to_jsonb(l) - 'last_used_at' AS before FROM key_list l WHERE id = :'u_id' \gset
SELECT (to_jsonb(l) - 'last_used_at') = :'before'::jsonb AS unchanged FROM api_key_update(:'u_id') l;
SELECT count(*) AS audit_rows_for_noop FROM audit_log WHERE key_id = :'u_id' AND action = 'updated';
-- each field changes on its own
SELECT name, description, scopes, allowed_cidrs, expires_at = now() + interval '10 days' AS expiry_kept,
       rate_limit_per_minute, rate_limit_per_hour, metadata
  FROM api_key_update(:'u_id', name => '  after  ');
SELECT description FROM api_key_update(:'u_id', description => 'new desc');
SELECT description FROM api_key_update(:'u_id', description => '');
SELECT scopes FROM api_key_update(:'u_id', scopes => ARRAY['runs:write', 'runs:write', 'projects/*:read']);
SELECT allowed_cidrs FROM api_key_update(:'u_id', allowed_cidrs => ARRAY['192.168.0.0/16', '2001:db8::/32']::cidr[]);
SELECT expires_at = now() + interval '1 year' AS new_expiry FROM api_key_update(:'u_id', expires_at => now() + interval '1 year');
SELECT rate_limit_per_minute, rate_limit_per_hour FROM api_key_update(:'u_id', rate_limit_per_minute => 20);
SELECT rate_limit_per_minute, rate_limit_per_hour FROM api_key_update(:'u_id', rate_limit_per_hour => 200);
SELECT metadata FROM api_key_update(:'u_id', metadata => '{"other": true}');
-- '{}' clears the CIDRs, 'infinity' clears the expiry, '{}' scopes leave none
SELECT allowed_cidrs FROM api_key_update(:'u_id', allowed_cidrs => '{}');
SELECT expires_at FROM api_key_update(:'u_id', expires_at => 'infinity');
SELECT scopes FROM api_key_update(:'u_id', scopes => '{}');
SELECT name, description, status, scopes, allowed_cidrs, expires_at, rate_limit_per_minute,
       rate_limit_per_hour, metadata
  FROM key_list WHERE id = :'u_id';
-- update validates like issue (22023, naming the field)
SELECT regress.expect_error(format('SELECT api_keys.api_key_update(%L, name => %L)', :'u_id', ''));
SELECT regress.expect_error(format('SELECT api_keys.api_key_update(%L, name => %L)', :'u_id', '  '));
SELECT regress.expect_error(format('SELECT api_keys.api_key_update(%L, scopes => %L)', :'u_id', '{runs}'));
SELECT regress.expect_error(format('SELECT api_keys.api_key_update(%L, scopes => %L)', :'u_id', '{NULL}'));
SELECT regress.expect_error(format('SELECT api_keys.api_key_update(%L, expires_at => now())', :'u_id'));
SELECT regress.expect_error(format('SELECT api_keys.api_key_update(%L, expires_at => %L)', :'u_id', '-infinity'));
SELECT regress.expect_error(format('SELECT api_keys.api_key_update(%L, rate_limit_per_minute => 0)', :'u_id'));
SELECT regress.expect_error(format('SELECT api_keys.api_key_update(%L, rate_limit_per_hour => -3)', :'u_id'));
SELECT regress.expect_error(format('SELECT api_keys.api_key_update(%L, metadata => %L)', :'u_id', '"text"'));
SELECT regress.expect_error(format('SELECT api_keys.api_key_update(%L, allowed_cidrs => ARRAY[NULL]::cidr[])', :'u_id'));
-- a wildcard CIDR through update: accepted with a WARNING
SELECT allowed_cidrs FROM api_key_update(:'u_id', allowed_cidrs => ARRAY['::/0']::cidr[]);
-- a suspended key can be updated
SELECT status FROM api_key_suspend(:'u_id');
SELECT name, status FROM api_key_update(:'u_id', name => 'while suspended');

-- editing scopes or CIDRs of a key used in the last 24 hours warns that live callers may
-- break (the prefix is pinned so the WARNING prints the same every run)
SELECT id AS w_id FROM api_key_issue('in use', 'service', 'production', ARRAY['runs:read']) \gset
SELECT regress.pin_prefix(:'w_id', 'ak_live_PinnedPrefix');
UPDATE keys SET last_used_at = now() - interval '1 hour' WHERE id = :'w_id';
SELECT scopes FROM api_key_update(:'w_id', scopes => ARRAY['runs:read', 'runs:write']);
SELECT allowed_cidrs FROM api_key_update(:'w_id', allowed_cidrs => ARRAY['10.0.0.0/8']::cidr[]);
SELECT allowed_cidrs FROM api_key_update(:'w_id', allowed_cidrs => '{}');
-- no WARNING: other fields, or the same scopes and CIDRs again (as stored: in another
-- order, or repeated)
SELECT name FROM api_key_update(:'w_id', name => 'still in use', expires_at => now() + interval '1 day');
SELECT scopes, allowed_cidrs FROM api_key_update(:'w_id', scopes => ARRAY['runs:read', 'runs:write'], allowed_cidrs => '{}');
SELECT allowed_cidrs FROM api_key_update(:'w_id', allowed_cidrs => ARRAY['10.0.0.0/8', '192.168.0.0/16']::cidr[]);
SELECT allowed_cidrs FROM api_key_update(:'w_id', allowed_cidrs => ARRAY['192.168.0.0/16', '10.0.0.0/8', '10.0.0.0/8']::cidr[]);
-- no WARNING when the edit is refused
SELECT regress.expect_error(format('SELECT api_keys.api_key_update(%L, allowed_cidrs => %L)', :'w_id', '{172.16.0.0/12,NULL}'));
-- no WARNING: last used more than 24 hours ago, or never
UPDATE keys SET last_used_at = now() - interval '25 hours' WHERE id = :'w_id';
SELECT scopes FROM api_key_update(:'w_id', scopes => ARRAY['runs:read']);
UPDATE keys SET last_used_at = NULL WHERE id = :'w_id';
SELECT scopes FROM api_key_update(:'w_id', scopes => ARRAY['*']);

-- direct UPDATEs by a member of api_keys_admin obey the same rules (55000)
CREATE ROLE regress_admin;
GRANT api_keys_admin TO regress_admin;
SELECT id AS a_id FROM api_key_issue('direct', 'service', 'production', ARRAY['runs:read']) \gset
SET ROLE regress_admin;
UPDATE api_keys.keys SET status = 'suspended', status_reason = 'by hand' WHERE id = :'a_id';
SELECT status, status_reason FROM api_keys.key_list WHERE id = :'a_id';
-- (writing the status a key already has is no transition: a no-op, not an error)
SELECT regress.expect_error(format('UPDATE api_keys.keys SET status = %L WHERE id = %L', 'suspended', :'a_id'));
UPDATE api_keys.keys SET status = 'active' WHERE id = :'a_id';
UPDATE api_keys.keys SET name = 'renamed by hand', scopes = '{runs:write,runs:write}' WHERE id = :'a_id';
SELECT name, scopes, status FROM api_keys.key_list WHERE id = :'a_id';
SELECT regress.expect_error(format('UPDATE api_keys.keys SET scopes = %L WHERE id = %L', '{Bad}', :'a_id'));
SELECT regress.expect_error(format('UPDATE api_keys.keys SET status = NULL WHERE id = %L', :'a_id'));
-- a direct UPDATE cannot end a key by dating it in the past (22023), nor hold a NULL CIDR
SELECT regress.expect_error(format('UPDATE api_keys.keys SET expires_at = now() - interval %L WHERE id = %L', '1 day', :'a_id'));
-- ... not even in the UPDATE that changes its status
SELECT regress.expect_error(format('UPDATE api_keys.keys SET status = %L, expires_at = %L WHERE id = %L', 'suspended', '2000-01-01', :'a_id'));
SELECT regress.expect_error(format('UPDATE api_keys.keys SET allowed_cidrs = %L WHERE id = %L', '{10.0.0.0/8,NULL}', :'a_id'));
-- a direct revoke needs a reason too (22023), like api_key_revoke
SELECT regress.expect_error(format('UPDATE api_keys.keys SET status = %L, status_reason = NULL WHERE id = %L', 'revoked', :'a_id'));
SELECT regress.expect_error(format('UPDATE api_keys.keys SET status = %L, status_reason = %L WHERE id = %L', 'revoked', '  ', :'a_id'));
UPDATE api_keys.keys SET status = 'revoked', status_reason = 'by hand' WHERE id = :'a_id';
SELECT regress.expect_error(format('UPDATE api_keys.keys SET status = %L WHERE id = %L', 'active', :'a_id'));
SELECT regress.expect_error(format('UPDATE api_keys.keys SET status = %L WHERE id = %L', 'expired', :'a_id'));
SELECT regress.expect_error(format('UPDATE api_keys.keys SET name = %L WHERE id = %L', 'after revoke', :'a_id'));
SELECT regress.expect_error(format('UPDATE api_keys.keys SET expires_at = now() + interval %L WHERE id = %L', '1 day', :'a_id'));
-- an expired key is terminal for direct UPDATEs too
SELECT id AS a2_id FROM api_keys.api_key_issue('direct expiry', 'service', 'production') \gset
UPDATE api_keys.keys SET status = 'expired' WHERE id = :'a2_id';
SELECT status, expires_at = now() AS ends_now FROM api_keys.key_list WHERE id = :'a2_id';
SELECT regress.expect_error(format('UPDATE api_keys.keys SET status = %L WHERE id = %L', 'active', :'a2_id'));
SELECT regress.expect_error(format('UPDATE api_keys.keys SET expires_at = NULL WHERE id = %L', :'a2_id'));
-- immutable columns are not even granted to the admin (42501)
SELECT c, regress.expect_error(format('UPDATE api_keys.keys SET %I = %s WHERE id = %L', c, v, :'a2_id'))
  FROM (VALUES ('id', 'gen_random_uuid()'), ('prefix', '''ak_live_AAAAAAAAAAAA'''),
               ('secret_hash', '''x'''), ('created_at', 'now()'), ('created_by', '''me'''),
               ('key_type', '''user'''), ('environment', '''staging'''),
               ('rotated_from', 'gen_random_uuid()')) AS t(c, v);
RESET ROLE;
-- ... and a superuser, who may write them, is stopped by the trigger (55000)
SELECT id AS a3_id FROM api_key_issue('immutable', 'service', 'production') \gset
SELECT c, regress.expect_error(format('UPDATE api_keys.keys SET %I = %s WHERE id = %L', c, v, :'a3_id'))
  FROM (VALUES ('id', 'gen_random_uuid()'), ('prefix', '''ak_live_AAAAAAAAAAAA'''),
               ('secret_hash', '''x'''), ('created_at', 'now() - interval ''1 day'''),
               ('created_by', '''me'''), ('key_type', '''user'''), ('environment', '''staging'''),
               ('rotated_from', 'gen_random_uuid()')) AS t(c, v);
SELECT name, status FROM key_list WHERE id = :'a3_id';

rollback;
