\set ON_ERROR_ROLLBACK on
\set SHOW_CONTEXT never
-- Who a management call acts for: current_user at its call site, as in PostgreSQL.
-- Inside a SECURITY DEFINER function owned by a plain role, only that role's keys can
-- be managed, whoever calls it, and the audit names that role; a direct UPDATE is
-- audited under the role that ran it.
begin;
SET search_path = api_keys, public;
SET api_keys.argon2_memory_kib = 64;
SET api_keys.argon2_iterations = 1;
CREATE ROLE regress_alice;
CREATE ROLE regress_bob;
CREATE ROLE regress_admin IN ROLE api_keys_admin;
CREATE SCHEMA regress_deputy AUTHORIZATION regress_alice;
GRANT USAGE ON SCHEMA regress_deputy TO regress_admin;

SET ROLE regress_bob;
SELECT id AS bob_key FROM api_key_issue('bob''s', 'service', 'development') \gset
SET ROLE regress_alice;
SELECT id AS alice_key FROM api_key_issue('alice''s', 'service', 'development') \gset
CREATE FUNCTION regress_deputy.revoke(k uuid) RETURNS text SECURITY DEFINER
LANGUAGE sql AS $$ SELECT status::text FROM api_keys.api_key_revoke(k, 'via alice''s function') $$;
CREATE FUNCTION regress_deputy.issue_for(o text) RETURNS void SECURITY DEFINER
LANGUAGE sql AS $$ SELECT FROM api_keys.api_key_issue('deputy', 'service', 'development', owner => o) $$;
CREATE FUNCTION regress_deputy.visible() RETURNS TABLE (listed bigint, viewed bigint) SECURITY DEFINER
LANGUAGE sql AS $$ SELECT (SELECT count(*) FROM api_keys.api_key_list()), (SELECT count(*) FROM api_keys.key_list) $$;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA regress_deputy TO regress_admin;

-- the admin sees every key itself, but through alice's functions only alice's
SET ROLE regress_admin;
SELECT count(*) >= 2 AS admin_sees_both FROM key_list WHERE id IN (:'bob_key', :'alice_key');
SELECT * FROM regress_deputy.visible();
-- bob's key cannot be revoked through alice's function, nor a key issued for bob
SELECT regress.expect_error(format('SELECT regress_deputy.revoke(%L)', :'bob_key'));
SELECT regress.expect_error($$SELECT regress_deputy.issue_for('regress_bob')$$);
SELECT regress_deputy.issue_for('regress_alice');
-- alice's own key can, and the audit names alice
SELECT regress_deputy.revoke(:'alice_key') AS alice_key_now;
RESET ROLE;
SELECT status FROM keys WHERE id = :'bob_key';
SELECT owner, created_by FROM keys WHERE name = 'deputy';
SELECT action, actor, reason FROM audit_log WHERE key_id = :'alice_key' ORDER BY id;

-- a direct UPDATE by an admin is audited under the admin, even after a management call
SET ROLE regress_admin;
SELECT name FROM api_key_update(:'bob_key', name => 'renamed by function');
UPDATE keys SET name = 'renamed directly' WHERE id = :'bob_key';
RESET ROLE;
SELECT action, actor, details FROM audit_log WHERE key_id = :'bob_key' AND action = 'updated' ORDER BY id;

-- an error inside a management call, caught by a savepoint, leaves no one acted for:
-- after alice's function fails for the admin, the admin acts for itself again
SET ROLE regress_admin;
SELECT regress.expect_error(format('SELECT regress_deputy.revoke(%L)', :'bob_key'));
SELECT _caller() AS after_caught_error, count(*) >= 2 AS sees_all_again
  FROM key_list WHERE id IN (:'bob_key', :'alice_key');
RESET ROLE;
rollback;
