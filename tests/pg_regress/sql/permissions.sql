\set ON_ERROR_ROLLBACK on
\set SHOW_CONTEXT never
-- Roles and privileges: PUBLIC, plain roles (own keys only), api_keys_admin,
-- api_keys_verifier, the secret hash, and SECURITY DEFINER hygiene.
begin;
SET search_path = api_keys, public;
SET api_keys.argon2_memory_kib = 64;
SET api_keys.argon2_iterations = 1;

-- the roles the extension provides cannot log in
SELECT rolname, rolcanlogin, rolsuper, rolinherit FROM pg_roles
 WHERE rolname IN ('api_keys_admin', 'api_keys_verifier') ORDER BY rolname;

-- test roles (CREATE ROLE is transactional: they vanish with the rollback)
CREATE ROLE regress_alice;
CREATE ROLE regress_bob;
CREATE ROLE regress_admin;
GRANT api_keys_admin TO regress_admin;
CREATE ROLE regress_verifier;
GRANT api_keys_verifier TO regress_verifier;

-- PUBLIC reads no table of the schema: not the keys, the audit log or the scope catalog
SELECT c.relname FROM pg_class c
 WHERE c.relnamespace = 'api_keys'::regnamespace AND c.relkind IN ('r', 'p', 'S', 'm')
   AND (has_table_privilege('regress_alice', c.oid, 'SELECT')
        OR has_table_privilege('regress_alice', c.oid, 'INSERT')
        OR has_table_privilege('regress_alice', c.oid, 'UPDATE')
        OR has_table_privilege('regress_alice', c.oid, 'DELETE')
        OR has_any_column_privilege('regress_alice', c.oid, 'SELECT'))
 ORDER BY 1;
SET ROLE regress_alice;
SELECT regress.expect_error('SELECT * FROM api_keys.keys');
SELECT regress.expect_error('SELECT id, name FROM api_keys.keys');
SELECT regress.expect_error('SELECT * FROM api_keys.audit_log');
SELECT regress.expect_error('SELECT * FROM api_keys.scope_catalog');
SELECT regress.expect_error($$UPDATE api_keys.keys SET name = 'x'$$);
SELECT regress.expect_error('DELETE FROM api_keys.keys');
SELECT regress.expect_error($$INSERT INTO api_keys.audit_log (action, actor) VALUES ('issued', 'me')$$);
SELECT regress.expect_error($$INSERT INTO api_keys.scope_catalog (resource, action) VALUES ('a', 'b')$$);
RESET ROLE;

-- what PUBLIC may execute in the schema: the self-service functions, key_pattern and
-- the helpers the views need (a new function shows up here and must be reviewed)
SELECT p.oid::regprocedure AS public_function FROM pg_proc p
 WHERE p.pronamespace = 'api_keys'::regnamespace
   AND has_function_privilege('regress_alice', p.oid, 'EXECUTE')
 ORDER BY p.proname, 1::text;
-- ... so a plain role cannot call the internals: not mint a signed key, nor make a
-- signing key id (signing.sql tries the other signing helpers, as an admin)
SET ROLE regress_alice;
SELECT regress.expect_error($$SELECT * FROM api_keys._mint_signed_key('production')$$);
SELECT regress.expect_error('SELECT api_keys._new_signing_key_id()');
SELECT regress.expect_error($$SELECT api_keys._check_scopes(ARRAY['*'], true)$$);
SELECT regress.expect_error('SELECT api_keys._key_for_update(gen_random_uuid())');
SELECT regress.expect_error($$SELECT api_keys._require_reason('x')$$);
SELECT count(*) AS key_pattern_callable FROM api_keys.key_pattern();
RESET ROLE;

-- nobody but a superuser can read secret_hash: not the admin, not the verifier, not PUBLIC
SELECT r.rolname FROM pg_roles r
 WHERE NOT r.rolsuper AND r.rolname !~ '^pg_'
   AND has_column_privilege(r.oid, 'api_keys.keys', 'secret_hash', 'SELECT')
 ORDER BY 1;
SELECT id AS b_id FROM api_key_issue('bob key', 'service', 'production', owner => 'regress_bob') \gset
SET ROLE regress_admin;
SELECT regress.expect_error('SELECT secret_hash FROM api_keys.keys');
SELECT regress.expect_error('SELECT * FROM api_keys.keys');
SELECT regress.expect_error('SELECT count(*) FROM api_keys.keys WHERE secret_hash IS NOT NULL');
SELECT regress.expect_error(format('UPDATE api_keys.keys SET secret_hash = %L WHERE id = %L', 'x', :'b_id'));
SELECT regress.expect_error(format('UPDATE api_keys.keys SET name = name WHERE id = %L RETURNING secret_hash', :'b_id'));
-- admins read stats(), the server's counters, and the audit log's sequence (pg_dump)
SELECT count(*) > 0 AS stats_readable FROM api_keys.stats();
SELECT last_value >= 1 AS sequence_readable FROM api_keys.audit_log_id_seq;
RESET ROLE;
SET ROLE regress_verifier;
SELECT regress.expect_error('SELECT secret_hash FROM api_keys.keys');
SELECT regress.expect_error('SELECT * FROM api_keys.stats()');
RESET ROLE;
SET ROLE regress_alice;
SELECT regress.expect_error('SELECT * FROM api_keys.stats()');
RESET ROLE;

-- a plain role issues keys for itself and sees only its own
SET ROLE regress_alice;
SELECT id AS a_id, key AS a_key FROM api_keys.api_key_issue('alice key', 'user', 'production') \gset
SELECT owner, created_by FROM api_keys.key_list WHERE id = :'a_id';
SELECT name, owner FROM api_keys.key_list ORDER BY name;
SELECT name, owner FROM api_keys.api_key_list();
SELECT count(*) AS bob_visible FROM api_keys.key_list WHERE id = :'b_id';
SELECT count(*) AS bob_via_owner_filter FROM api_keys.api_key_list(owner => 'regress_bob');
-- ... and cannot widen the view's row filter by shadowing a type its helpers use with
-- one of its own in pg_temp (which comes first for types): the helpers pin search_path
CREATE TYPE pg_temp.name AS ENUM ('x');
CREATE FUNCTION pg_temp.to_fake(text) RETURNS pg_temp.name LANGUAGE sql AS $$SELECT 'x'::pg_temp.name$$;
CREATE CAST (text AS pg_temp.name) WITH FUNCTION pg_temp.to_fake(text);
CREATE FUNCTION pg_temp.to_name(pg_temp.name) RETURNS pg_catalog.name LANGUAGE sql AS $$SELECT 'postgres'::pg_catalog.name$$;
CREATE CAST (pg_temp.name AS pg_catalog.name) WITH FUNCTION pg_temp.to_name(pg_temp.name) AS IMPLICIT;
SELECT count(*) AS bob_visible_after_shadowing FROM api_keys.key_list WHERE id = :'b_id';
SELECT api_keys._caller_is_admin() AS alice_is_admin;
-- ... cannot issue for another owner (42501), not even for an admin
SELECT regress.expect_error($$SELECT * FROM api_keys.api_key_issue('x', 'user', 'production', owner => 'regress_bob')$$);
SELECT regress.expect_error($$SELECT * FROM api_keys.api_key_issue('x', 'user', 'production', owner => 'regress_admin')$$);
-- ... and manages only its own: another owner's key is P0002, exactly like a missing one
SELECT f, regress.expect_error(format(stmt, :'b_id'))
  FROM (VALUES (1, 'suspend', 'SELECT api_keys.api_key_suspend(%L)'),
               (2, 'reactivate', 'SELECT api_keys.api_key_reactivate(%L)'),
               (3, 'revoke', 'SELECT api_keys.api_key_revoke(%L, ''mine now'')'),
               (4, 'set_status', 'SELECT api_keys.api_key_set_status(%L, ''expired'')'),
               (5, 'delete', 'SELECT api_keys.api_key_delete(%L)'),
               (6, 'rotate', 'SELECT api_keys.api_key_rotate(%L)'),
               (7, 'update', 'SELECT api_keys.api_key_update(%L, name => ''hijacked'')')) AS t(n, f, stmt)
 ORDER BY n;
-- ... while its own key works through every function
SELECT status FROM api_keys.api_key_suspend(:'a_id');
SELECT status FROM api_keys.api_key_reactivate(:'a_id');
SELECT name FROM api_keys.api_key_update(:'a_id', name => 'alice key v2');
SELECT id AS a2_id, key AS a2_key FROM api_keys.api_key_rotate(:'a_id', '1 hour') \gset
SELECT owner, created_by, rotated_from = :'a_id' AS rotated FROM api_keys.key_list WHERE id = :'a2_id';
SELECT status FROM api_keys.api_key_revoke(:'a_id', 'rotated');
SELECT name FROM api_keys.api_key_delete(:'a_id');
-- ... a leaky function in a WHERE clause sees only its own rows (security_barrier views)
CREATE TEMP TABLE seen (name text);
CREATE FUNCTION pg_temp.leak(name text) RETURNS boolean
LANGUAGE plpgsql COST 0.0000001 AS $$ BEGIN INSERT INTO pg_temp.seen VALUES (name); RETURN true; END $$;
SELECT count(*) AS rows FROM api_keys.key_list WHERE pg_temp.leak(name);
SELECT count(*) AS rows FROM api_keys.expiring_soon WHERE pg_temp.leak(name);
SELECT DISTINCT name FROM seen ORDER BY 1;
-- ... it cannot weaken hashing or change the brand (superuser-only settings)
SELECT regress.expect_error('SET api_keys.argon2_memory_kib = 64');
SELECT regress.expect_error('SET api_keys.argon2_iterations = 1');
SELECT regress.expect_error($$SET api_keys.brand = 'evil'$$);
-- ... it cannot verify keys (not even its own) unless it is a verifier
SELECT regress.expect_error(format('SELECT * FROM api_keys.api_key_verify(%L)', :'a2_key'));
-- ... and cannot register scopes or prune the audit log
SELECT regress.expect_error($$SELECT api_keys.api_key_register_scope('runs', 'read')$$);
SELECT regress.expect_error($$SELECT api_keys.audit_prune('1 day')$$);
RESET ROLE;
-- bob's key was untouched
SELECT name, status FROM key_list WHERE id = :'b_id';

-- the owner is the role the session acts as, also when logged in as that role
-- (SET SESSION AUTHORIZATION: current_setting('role') is 'none')
SET SESSION AUTHORIZATION regress_bob;
SELECT name, owner FROM api_keys.key_list ORDER BY name;
SELECT id AS bs_id FROM api_keys.api_key_issue('bob session key', 'user', 'staging') \gset
SELECT owner, created_by FROM api_keys.key_list WHERE id = :'bs_id';
SELECT regress.expect_error($$SELECT * FROM api_keys.api_key_issue('x', 'user', 'production', owner => 'regress_alice')$$);
RESET SESSION AUTHORIZATION;

-- a member of another role does not manage that role's keys while acting as itself
GRANT regress_bob TO regress_alice;
SET ROLE regress_alice;
SELECT regress.expect_error(format('SELECT api_keys.api_key_suspend(%L)', :'b_id'));
-- ... but does after SET ROLE to it
SET ROLE regress_bob;
SELECT name, status FROM api_keys.api_key_suspend(:'b_id');
SELECT name, status FROM api_keys.api_key_reactivate(:'b_id');
RESET ROLE;
REVOKE regress_bob FROM regress_alice;

-- api_keys_admin: sees and manages every key, issues for any owner, reads the audit log
-- and the catalog, registers scopes, prunes the audit log, edits keys directly
SET ROLE regress_admin;
SELECT count(*) = (SELECT count(*) FROM api_keys.key_list) AS admin_lists_all,
       count(*) >= 2 AS several_owners_visible
  FROM api_keys.api_key_list(page_size => 1000);
SELECT array_agg(DISTINCT owner ORDER BY owner) AS owners FROM api_keys.key_list;
SELECT id AS c_id FROM api_keys.api_key_issue('for carol', 'service', 'production', owner => 'regress_carol') \gset
SELECT owner, created_by FROM api_keys.key_list WHERE id = :'c_id';
SELECT name, status FROM api_keys.api_key_suspend(:'b_id', 'admin says so');
SELECT name, status FROM api_keys.api_key_reactivate(:'b_id');
SELECT name FROM api_keys.api_key_update(:'b_id', name => 'bob key (renamed by admin)');
SELECT count(*) > 0 AS reads_audit_log FROM api_keys.audit_log;
SELECT count(*) AS reads_catalog FROM api_keys.scope_catalog;
SELECT resource, action FROM api_keys.api_key_register_scope('runs', 'read');
SELECT api_keys.audit_prune('30 days') AS pruned;
UPDATE api_keys.keys SET description = 'edited directly' WHERE id = :'b_id';
SELECT description FROM api_keys.key_list WHERE id = :'b_id';
-- ... but the admin cannot insert or delete key rows, nor write the audit log or catalog directly
SELECT regress.expect_error($$DELETE FROM api_keys.keys$$);
SELECT regress.expect_error($$INSERT INTO api_keys.keys (prefix, secret_hash, name, key_type, environment, owner, created_by) VALUES ('p', 'h', 'n', 'user', 'production', 'o', 'c')$$);
SELECT regress.expect_error($$INSERT INTO api_keys.audit_log (action, actor) VALUES ('issued', 'me')$$);
SELECT regress.expect_error($$UPDATE api_keys.audit_log SET reason = 'x'$$);
SELECT regress.expect_error($$DELETE FROM api_keys.audit_log$$);
SELECT regress.expect_error($$INSERT INTO api_keys.scope_catalog (resource, action) VALUES ('a', 'b')$$);
-- ... and an admin is not a verifier
SELECT regress.expect_error($$SELECT * FROM api_keys.api_key_verify('x')$$);
RESET ROLE;

-- api_keys_verifier: verifies any key, but lists and changes none
SET ROLE regress_verifier;
SELECT valid, reason, owner FROM api_keys.api_key_verify(:'a2_key');
SELECT count(*) AS rows FROM api_keys.api_key_verify('garbage');
SELECT count(*) AS keys_visible FROM api_keys.key_list;
SELECT regress.expect_error('SELECT id FROM api_keys.keys');
SELECT regress.expect_error(format('SELECT api_keys.api_key_suspend(%L)', :'b_id'));
SELECT regress.expect_error($$SELECT api_keys.audit_prune('1 day')$$);
RESET ROLE;

-- PUBLIC has no implicit rights through the verifier and admin roles
SELECT r.rolname, pg_has_role('regress_alice', r.oid, 'MEMBER') AS alice_member
  FROM pg_roles r WHERE r.rolname IN ('api_keys_admin', 'api_keys_verifier') ORDER BY 1;

-- every SECURITY DEFINER function in the schema pins search_path, with pg_temp last
-- (query the catalog, so functions added later are covered)
SELECT count(*) > 0 AS has_security_definer_functions FROM pg_proc
 WHERE pronamespace = 'api_keys'::regnamespace AND prosecdef;
SELECT p.oid::regprocedure AS unpinned FROM pg_proc p
 WHERE p.pronamespace = 'api_keys'::regnamespace AND p.prosecdef
   AND NOT EXISTS (SELECT FROM unnest(p.proconfig) c
                    WHERE c ~ '^search_path=' AND c ~ 'pg_temp$' AND c !~ '(public|\$user)')
 ORDER BY 1::text;
-- ... and every SECURITY DEFINER function is owned by a superuser-owned extension member
SELECT p.oid::regprocedure AS not_in_extension FROM pg_proc p
 WHERE p.pronamespace = 'api_keys'::regnamespace AND p.prosecdef
   AND NOT EXISTS (SELECT FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
                    WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                      AND d.deptype = 'e' AND e.extname = 'api_keys')
 ORDER BY 1::text;

rollback;
