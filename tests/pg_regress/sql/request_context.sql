\set ON_ERROR_ROLLBACK on
\set SHOW_CONTEXT never
-- The request context: login() and authenticate() set it for the current transaction,
-- current_key_id/current_owner/has_scope/require_scope read it; refusals carry
-- PT401/PT403/PT429 and name the reason, never the key; nothing a role can SET forges it.
begin;
SET search_path = api_keys, public;
SET api_keys.argon2_memory_kib = 64;
SET api_keys.argon2_iterations = 1;

SELECT id AS a_id, key AS a, prefix AS a_prefix
  FROM api_key_issue('alice app', 'service', 'production',
                     ARRAY['projects/42/*:read', 'runs:write'], owner => 'alice') \gset
SELECT id AS b_id, key AS b
  FROM api_key_issue('bob app', 'user', 'development', ARRAY['*'], owner => 'bob') \gset
SELECT substr(:'a', length(:'a_prefix') + 2, 43) AS a_secret \gset

-- before any login: anonymous
SELECT current_key_id(), current_owner(), has_scope('runs:write') AS has_scope;
SELECT regress.expect_error($$SELECT api_keys.require_scope('runs:write')$$);

-- login returns the key id and sets the context
SELECT login(:'a') = :'a_id' AS login_returns_id;
SELECT current_key_id() = :'a_id' AS current_key, current_owner();
SELECT s AS required, has_scope(s) AS has_scope
  FROM unnest(ARRAY['projects/42/runs:read', 'projects/42:read', 'projects/42/runs/7:read',
                    'projects/43/runs:read', 'projects/42/runs:write', 'runs:write',
                    'runs:read', '*']) AS s;
SELECT regress.expect_error($$SELECT api_keys.require_scope('projects/42/runs:read')$$);
SELECT regress.expect_error($$SELECT api_keys.require_scope('projects/43/runs:read')$$);

-- a text that is not a scope: has_scope grants nothing (a policy building scopes from
-- row data denies an odd row rather than failing the query); require_scope, an
-- explicit check in code, raises 22023
SELECT s AS required, has_scope(s) AS has_scope
  FROM unnest(ARRAY['Runs:Read', 'projects//runs:read', 'projects/-5/runs:read', '']) AS s;
SELECT regress.expect_error($$SELECT api_keys.require_scope('no action')$$);
SELECT regress.expect_error($$SELECT api_keys.require_scope(NULL)$$);
SELECT has_scope(NULL) AS has_scope_null;

-- a second login replaces the context; a rolled-back savepoint restores the one before
SAVEPOINT s1;
SELECT login(:'b') = :'b_id' AS bob;
SELECT current_owner(), has_scope('anything/at/all:delete') AS full_access;
ROLLBACK TO s1;
SELECT current_owner() AS after_rollback_to;
-- ... and a released one keeps it
SAVEPOINT s2;
SELECT login(:'b') = :'b_id' AS bob;
RELEASE s2;
SELECT current_owner() AS after_release;
SELECT login(:'a') = :'a_id' AS alice_again;

-- nothing a role can set forges the context
SELECT set_config('api_keys.current_key_id', :'b_id', true) IS NOT NULL AS set,
       set_config('api_keys.current_owner', 'bob', true) IS NOT NULL AS set;
SELECT set_config('request.headers', format('{"x-api-key": "%s"}', :'b'), true) IS NOT NULL AS set;
SELECT current_key_id() = :'a_id' AS still_alice, current_owner();

-- every refusal: SQLSTATE PT401/PT403/PT429 and the reason, never the key
SELECT id AS s_id, key AS s FROM api_key_issue('suspended', 'service', 'production') \gset
SELECT (api_key_suspend(:'s_id', 'paused')).status;
SELECT id AS r_id, key AS r FROM api_key_issue('revoked', 'service', 'production') \gset
SELECT (api_key_revoke(:'r_id', 'leaked')).status;
SELECT id AS e_id, key AS e FROM api_key_issue('expired', 'service', 'production') \gset
SELECT (api_key_set_status(:'e_id', 'expired')).status;
SELECT key AS n FROM api_key_issue('net', 'service', 'production',
                                   allowed_cidrs => '{10.0.0.0/8}') \gset
SELECT key AS l FROM api_key_issue('limited', 'service', 'production',
                                   rate_limit_per_hour => 1) \gset
-- a key issued before 0.5.0 (unsigned: keys.signing_key made NULL with the triggers
-- off, as in verify.sql); its text is the unsigned shape of its secret
SELECT id AS u_id, key AS u_signed, prefix AS u_prefix
  FROM api_key_issue('unsigned', 'service', 'production') \gset
SET session_replication_role = replica;
UPDATE keys SET signing_key = NULL WHERE id = :'u_id';
RESET session_replication_role;
SELECT regress.forge_key(:'u_prefix', substr(:'u_signed', length(:'u_prefix') + 2, 43)) AS u \gset
SELECT login(:'u') = :'u_id' AS unsigned_key_logs_in;
SELECT login(:'l') IS NOT NULL AS first_call_of_the_hour;
SELECT login(:'a') = :'a_id' AS alice_again;
SELECT label, regress.expect_error(format('SELECT api_keys.login(%L, %L)', k, ip)) AS error
  FROM (VALUES
    ('null', NULL, NULL),
    ('garbage', 'not a key', NULL),
    ('bad checksum', left(:'a', -1) || CASE WHEN right(:'a', 1) = 'x' THEN 'y' ELSE 'x' END, NULL),
    ('unknown prefix', regress.forge_key('ak_live_AAAAAAAAAAAA', :'a_secret'), NULL),
    -- a is signed: a wrong secret for it is refused as forged, before argon2
    ('wrong secret', regress.forge_key(:'a_prefix', repeat('A', 43)), NULL),
    -- u is unsigned: a wrong secret for it is refused by argon2
    ('wrong secret, unsigned key', regress.forge_key(:'u_prefix', repeat('A', 43)), NULL),
    ('suspended', :'s', NULL),
    ('revoked', :'r', NULL),
    ('expired', :'e', NULL),
    ('outside cidrs', :'n', '192.0.2.1'),
    ('no address', :'n', NULL),
    ('over the limit', :'l', NULL)
  ) AS t(label, k, ip);
-- ... and a refused login leaves the context as it was
SELECT current_owner() AS after_refusals;
-- the error text never carries the secret
SELECT regress.expect_error(format('SELECT api_keys.login(%L)', regress.forge_key(:'a_prefix', repeat('A', 43))))
       LIKE '%' || repeat('A', 43) || '%' AS secret_in_error;
SELECT login(:'n', '10.1.2.3') IS NOT NULL AS inside_cidrs, current_owner();

-- privileges: login/authenticate are for api_keys_verifier; the readers are PUBLIC
CREATE ROLE regress_plain;
CREATE ROLE regress_verifier IN ROLE api_keys_verifier;
SET ROLE regress_plain;
SELECT regress.expect_error(format('SELECT api_keys.login(%L)', :'a'));
SELECT regress.expect_error('SELECT api_keys.authenticate()');
SELECT current_owner() AS plain_reads_the_context, has_scope('runs:write') AS has_scope;
RESET ROLE;
SET ROLE regress_verifier;
SELECT login(:'b') = :'b_id' AS verifier_logs_in;
RESET ROLE;
rollback;

-- the context ends with the transaction
SELECT api_keys.current_key_id(), api_keys.current_owner(), api_keys.has_scope('*') AS has_scope;
