\set ON_ERROR_ROLLBACK on
\set SHOW_CONTEXT never
-- The audit log: every change recorded with actor, app actor, reason and statuses; no
-- secret in it; append-only; audit_prune.
begin;
SET search_path = api_keys, public;
SET api_keys.argon2_memory_kib = 64;
SET api_keys.argon2_iterations = 1;

CREATE ROLE regress_alice;
CREATE ROLE regress_admin;
GRANT api_keys_admin TO regress_admin;

-- the log starts empty in this transaction (every test rolls back)
SELECT count(*) AS entries FROM audit_log;

-- issued: actor is the calling role (via SET ROLE too), app_actor the api_keys.actor setting
SET ROLE regress_alice;
SET LOCAL api_keys.actor = 'jane@example.com';
SELECT id AS k_id, key AS k, prefix AS k_prefix
  FROM api_keys.api_key_issue('audited', 'service', 'production', ARRAY['runs:read'],
                              expires_at => now() + interval '10 days') \gset
RESET api_keys.actor;
RESET ROLE;
SELECT action, actor, app_actor, old_status, new_status, reason, key_id = :'k_id' AS key_id,
       prefix = :'k_prefix' AS prefix, at BETWEEN now() AND clock_timestamp() AS at_now,
       details - 'expires_at' AS details, (details->>'expires_at')::timestamptz = now() + interval '10 days' AS details_expiry
  FROM audit_log WHERE key_id = :'k_id';

-- every lifecycle change is one entry, with old and new status and the reason
SET ROLE regress_alice;
SELECT status FROM api_keys.api_key_suspend(:'k_id', 'investigating');
SELECT status FROM api_keys.api_key_reactivate(:'k_id');
SELECT name FROM api_keys.api_key_update(:'k_id', name => 'audited v2', scopes => ARRAY['runs:read', 'runs:write']);
RESET ROLE;
-- the admin, with an application actor
SET ROLE regress_admin;
SET LOCAL api_keys.actor = 'ops-bot';
SELECT status FROM api_keys.api_key_set_status(:'k_id', 'suspended', 'billing hold');
SELECT status FROM api_keys.api_key_set_status(:'k_id', 'active');
SELECT id AS n_id, prefix AS n_prefix FROM api_keys.api_key_rotate(:'k_id', '1 hour') \gset
RESET api_keys.actor;
RESET ROLE;
-- the superuser, without one
SELECT status FROM api_key_revoke(:'k_id', 'rotation finished');
SELECT name FROM api_key_delete(:'k_id');
SELECT id AS x_id FROM api_key_issue('to expire', 'service', 'production') \gset
SELECT status FROM api_key_set_status(:'x_id', 'expired', 'end of project');

SELECT action, actor, app_actor, old_status, new_status, reason
  FROM audit_log WHERE key_id = :'k_id' ORDER BY id;
SELECT action, actor, old_status, new_status, reason FROM audit_log WHERE key_id = :'x_id' ORDER BY id;

-- details: what changed (old and new), never the hash or the key
SELECT details FROM audit_log WHERE key_id = :'k_id' AND action = 'updated' AND details ? 'name';
SELECT details->'expires_at' IS NOT NULL AS expiry_change_recorded
  FROM audit_log WHERE key_id = :'k_id' AND action = 'updated' AND details ? 'expires_at';
SELECT details->>'new_key_id' = :'n_id' AS names_new_key, details->>'new_prefix' = :'n_prefix' AS names_new_prefix,
       details->>'grace' AS grace
  FROM audit_log WHERE key_id = :'k_id' AND action = 'rotated';
SELECT details FROM audit_log WHERE key_id = :'k_id' AND action = 'deleted';
SELECT details->>'rotated_from' = :'k_id' AS rotated_from_recorded
  FROM audit_log WHERE key_id = :'n_id' AND action = 'issued';
-- (the prefix is public; the secret part and the hash appear nowhere in the log)
SELECT count(*) AS entries_with_secrets FROM audit_log a
 WHERE strpos(to_jsonb(a)::text, substr(:'k', length(:'k_prefix') + 2)) > 0
    OR to_jsonb(a)::text ~ 'argon2|secret_hash|\$v=19\$';
SELECT count(*) AS entries_with_hash_of_any_key FROM audit_log a, keys k
 WHERE strpos(to_jsonb(a)::text, k.secret_hash) > 0;
-- usage bookkeeping is not an edit: last_used_at/last_used_ip changes are not logged
SELECT count(*) AS before FROM audit_log WHERE key_id = :'n_id' \gset
UPDATE keys SET last_used_at = now(), last_used_ip = '10.0.0.1' WHERE id = :'n_id';
SELECT count(*) - :before AS new_entries FROM audit_log WHERE key_id = :'n_id';
-- an update that changes nothing is not logged either
SELECT name FROM api_key_update(:'n_id', name => 'audited v2');
SELECT count(*) - :before AS new_entries FROM audit_log WHERE key_id = :'n_id';

-- direct UPDATEs by an admin are audited with the admin as actor
SET ROLE regress_admin;
UPDATE api_keys.keys SET description = 'set directly', metadata = '{"x": 1}' WHERE id = :'n_id';
UPDATE api_keys.keys SET status = 'suspended', status_reason = 'direct' WHERE id = :'n_id';
RESET ROLE;
SELECT action, actor, old_status, new_status, reason, details
  FROM audit_log WHERE key_id = :'n_id' AND actor = 'regress_admin' AND action <> 'issued' ORDER BY id;

-- the audit log is append-only, even for a superuser: UPDATE, DELETE, TRUNCATE raise
SELECT regress.expect_error($$UPDATE api_keys.audit_log SET reason = 'rewritten'$$);
SELECT regress.expect_error('DELETE FROM api_keys.audit_log');
SELECT regress.expect_error(format('DELETE FROM api_keys.audit_log WHERE key_id = %L', :'k_id'));
SELECT regress.expect_error('TRUNCATE api_keys.audit_log');
UPDATE audit_log SET reason = 'x';
SELECT :'LAST_ERROR_SQLSTATE' AS last_error_sqlstate;
SELECT count(*) AS untouched FROM audit_log WHERE key_id = :'k_id';
-- the admin reads it but cannot write it
SET ROLE regress_admin;
SELECT count(*) > 0 AS admin_reads FROM api_keys.audit_log;
SELECT regress.expect_error($$UPDATE api_keys.audit_log SET reason = 'rewritten'$$);
SELECT regress.expect_error('DELETE FROM api_keys.audit_log');
SELECT regress.expect_error('TRUNCATE api_keys.audit_log');
RESET ROLE;
-- plain roles cannot read it at all
SET ROLE regress_alice;
SELECT regress.expect_error('SELECT count(*) FROM api_keys.audit_log');
RESET ROLE;

-- audit_prune removes only entries older than the interval and returns how many
INSERT INTO audit_log (at, key_id, prefix, action, actor, reason)
VALUES (now() - interval '400 days', NULL, 'ak_live_oldoldoldold', 'issued', 'history', 'very old'),
       (now() - interval '40 days', NULL, 'ak_live_oldoldoldold', 'revoked', 'history', 'old'),
       (now() - interval '10 days', NULL, 'ak_live_oldoldoldold', 'deleted', 'history', 'recent');
SELECT count(*) AS total_before FROM audit_log \gset
SELECT audit_prune('30 days') AS pruned;
SELECT reason FROM audit_log WHERE actor = 'history' ORDER BY at;
SELECT :total_before - count(*) AS removed FROM audit_log;
SELECT audit_prune('30 days') AS pruned_again;
-- as the admin too; the append-only rule is back in force after pruning
SET ROLE regress_admin;
SELECT api_keys.audit_prune('5 days') AS pruned_by_admin;
SHOW session_replication_role;
SELECT regress.expect_error('DELETE FROM api_keys.audit_log');
RESET ROLE;
SELECT reason FROM audit_log WHERE actor = 'history' ORDER BY at;
SELECT count(*) > 0 AS current_entries_kept FROM audit_log WHERE key_id = :'k_id';
-- non-positive (or NULL) intervals are rejected (22023)
SELECT regress.expect_error($$SELECT api_keys.audit_prune('0')$$);
SELECT regress.expect_error($$SELECT api_keys.audit_prune('-1 day')$$);
SELECT regress.expect_error($$SELECT api_keys.audit_prune('1 day ago')$$);
SELECT regress.expect_error('SELECT api_keys.audit_prune(NULL)');
-- plain roles may not prune
SET ROLE regress_alice;
SELECT regress.expect_error($$SELECT api_keys.audit_prune('1 day')$$);
RESET ROLE;

rollback;
