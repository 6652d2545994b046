\set ON_ERROR_ROLLBACK on
\set SHOW_CONTEXT never
-- The view api_keys.key_audit: each role reads the audit entries of the keys it may
-- see (its own); admins read every entry, deleted keys' history included; the log
-- itself stays admins-only.
begin;
SET search_path = api_keys, public;
SET api_keys.argon2_memory_kib = 64;
SET api_keys.argon2_iterations = 1;

CREATE ROLE regress_ka_alice;
CREATE ROLE regress_ka_bob;
CREATE ROLE regress_ka_admin IN ROLE api_keys_admin;
CREATE ROLE regress_ka_verifier IN ROLE api_keys_verifier;

SET ROLE regress_ka_alice;
SELECT id AS a_id FROM api_keys.api_key_issue('alice''s', 'user', 'development') \gset
SELECT status FROM api_keys.api_key_suspend(:'a_id'::uuid, 'alice looks');
RESET ROLE;
SET ROLE regress_ka_bob;
SELECT id AS b_id FROM api_keys.api_key_issue('bob''s', 'service', 'production') \gset
RESET ROLE;
SELECT id AS gone_id FROM api_key_issue('gone', 'service', 'production', owner => 'regress_ka_bob') \gset
SELECT name FROM api_key_delete(:'gone_id'::uuid);

-- alice: her key's history, and nothing of bob's
SET ROLE regress_ka_alice;
SELECT key_id = :'a_id' AS own_key, action, actor, old_status, new_status, reason
  FROM api_keys.key_audit ORDER BY id;
SELECT regress.expect_error('SELECT * FROM api_keys.audit_log');
RESET ROLE;
-- bob: his live key; a deleted key's history is no longer his to read
SET ROLE regress_ka_bob;
SELECT key_id = :'b_id' AS own_key, action FROM api_keys.key_audit ORDER BY id;
RESET ROLE;
-- an admin: every entry, as in the log
SET ROLE regress_ka_admin;
SELECT (SELECT count(*) FROM api_keys.key_audit) = (SELECT count(*) FROM api_keys.audit_log) AS all_entries,
       (SELECT count(*) FROM api_keys.key_audit WHERE action = 'deleted') AS deleted_entries;
RESET ROLE;
-- a verifier owns no key: nothing
SET ROLE regress_ka_verifier;
SELECT count(*) AS verifier_sees FROM api_keys.key_audit;
RESET ROLE;
rollback;
