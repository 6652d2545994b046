\set ON_ERROR_ROLLBACK on
\set SHOW_CONTEXT never
-- Scopes: the grammar, the scope catalog (api_key_register_scope) and its enforcement on
-- issue, update and direct UPDATEs, and matching through api_key_verify's required_scope.
begin;
SET search_path = api_keys, public;
SET api_keys.argon2_memory_kib = 64;
SET api_keys.argon2_iterations = 1;

-- the grammar: valid scopes are accepted (and stored as written) ...
SELECT s AS scope, regress.expect_error(format('SELECT * FROM api_keys.api_key_issue(%L, %L, %L, ARRAY[%L])',
                                               'grammar', 'service', 'development', s)) AS result
  FROM unnest(ARRAY['*', 'runs:read', 'test-cases:write', 'projects/42/runs:*', '*:read', '*:*',
                    'a/*/b:x_y', 'projects/42/*:read', 'runs:submit', 'a_b/0-9:admin']) WITH ORDINALITY AS t(s, n)
 ORDER BY n;
SELECT DISTINCT scopes FROM keys WHERE name = 'grammar' ORDER BY 1;

-- ... malformed ones are 22023, naming the scope and what is wrong (201 a's shown as
-- <a x 201>; a scope over 200 bytes is refused by its size, unread)
SELECT regexp_replace(s, 'a{201}', '<a x 201>') AS scope,
       regexp_replace(regress.expect_error(format('SELECT * FROM api_keys.api_key_issue(%L, %L, %L, ARRAY[%L])',
                                                  'bad', 'service', 'development', s)),
                      'a{201}', '<a x 201>') AS result
  FROM unnest(ARRAY['', 'runs', 'Runs:read', 'runs:Read', 'runs:', ':read', 'runs:read:x', 'a//b:r',
                    '-a:read', 'a b:read', 'runs:1read', '**:read', 'runs:re*d', 'runs/:read',
                    ' runs:read', 'runs:read ', '**', 'rüns:read', repeat('a', 201) || ':read'])
       WITH ORDINALITY AS t(s, n)
 ORDER BY n;
SELECT count(*) AS bad_keys FROM keys WHERE name = 'bad';

-- the catalog: empty at first, so any well-formed scope is accepted
SELECT count(*) AS catalog_entries FROM scope_catalog;
SELECT scopes FROM api_key_update((SELECT id FROM keys WHERE name = 'grammar' LIMIT 1), scopes => ARRAY['anything:goes']);

-- api_key_register_scope: returns the entry; registering again updates the description
SELECT resource, action, description FROM api_key_register_scope('runs', 'read', 'Read test runs');
SELECT resource, action, description FROM api_key_register_scope('runs', 'write');
SELECT resource, action, description FROM api_key_register_scope('projects/*/runs', 'read');
SELECT resource, action, description FROM api_key_register_scope('test-cases', '*', 'Everything on test cases');
SELECT resource, action, description FROM api_key_register_scope('runs', 'read', 'Read runs (v2)');
SELECT resource, action, description FROM scope_catalog ORDER BY resource COLLATE "C", action COLLATE "C";

-- register_scope rejects bad grammar and NULLs (22023)
SELECT r, a, regress.expect_error(format('SELECT api_keys.api_key_register_scope(%L, %L)', r, a))
  FROM (VALUES (1, 'Runs', 'read'), (2, 'runs', 'READ'), (3, '', 'read'), (4, 'runs', ''),
               (5, 'a:b', 'read'), (6, 'runs', 'read:write'), (7, 'a//b', 'read'),
               (8, NULL, 'read'), (9, 'runs', NULL)) AS t(n, r, a)
 ORDER BY n;
SELECT count(*) AS catalog_entries FROM scope_catalog;

-- with entries in the catalog, issue accepts only scopes that match it; the HINT lists them
-- (a scope is accepted when it overlaps an entry, as README, Scopes, says: so 'runs:*'
-- and '*' pass although they also grant the uncatalogued runs:delete)
SELECT s AS scope, regress.expect_error(format('SELECT * FROM api_keys.api_key_issue(%L, %L, %L, ARRAY[%L])',
                                               'catalog', 'service', 'production', s)) AS result
  FROM unnest(ARRAY['runs:read', 'runs:write', 'runs:*', 'projects/42/runs:read', 'projects/*/runs:read',
                    'test-cases:read', 'test-cases:anything', '*',
                    'runs:delete', 'rnus:read', 'projects/42/runs:write', 'projects/42:read',
                    'projects/42/runs/7:read', 'test-case:read']) WITH ORDINALITY AS t(s, n)
 ORDER BY n;
-- one bad scope in a list rejects the whole list
SELECT regress.expect_error($$SELECT * FROM api_keys.api_key_issue('catalog', 'service', 'production', ARRAY['runs:read', 'runs:delete'])$$);

-- update enforces the catalog too
SELECT id AS u_id FROM api_key_issue('catalog update', 'service', 'production', ARRAY['runs:read']) \gset
SELECT regress.expect_error(format('SELECT api_keys.api_key_update(%L, scopes => %L)', :'u_id', '{runs:delete}'));
SELECT scopes FROM api_key_update(:'u_id', scopes => ARRAY['runs:write', 'projects/9/runs:read']);

-- so do direct UPDATEs of api_keys.keys (the guard trigger)
SELECT regress.expect_error(format('UPDATE api_keys.keys SET scopes = %L WHERE id = %L', '{runs:delete}', :'u_id'));
SELECT regress.expect_error(format('UPDATE api_keys.keys SET scopes = %L WHERE id = %L', '{Runs:read}', :'u_id'));
SELECT scopes FROM key_list WHERE id = :'u_id';

-- keys issued before an entry existed keep their scopes and still verify
SELECT key AS old_key FROM api_key_issue('pre-existing', 'service', 'production', ARRAY['runs:read']) \gset
SELECT valid, reason FROM api_key_verify(:'old_key', NULL, 'runs:read');

-- only api_keys_admin registers scopes: a plain role gets 42501
CREATE ROLE regress_alice;
CREATE ROLE regress_admin;
GRANT api_keys_admin TO regress_admin;
SET ROLE regress_alice;
SELECT regress.expect_error($$SELECT api_keys.api_key_register_scope('reports', 'read')$$);
SELECT regress.expect_error('SELECT * FROM api_keys.scope_catalog');
-- the catalog binds plain roles' keys as well
SELECT regress.expect_error($$SELECT * FROM api_keys.api_key_issue('mine', 'service', 'production', ARRAY['reports:read'])$$);
SET ROLE regress_admin;
SELECT resource, action FROM api_key_register_scope('reports', 'read');
SELECT count(*) AS admin_reads_catalog FROM scope_catalog;
SET ROLE regress_alice;
SELECT count(*) AS issued FROM api_keys.api_key_issue('mine', 'service', 'production', ARRAY['reports:read']);
RESET ROLE;

-- matching through required_scope: wildcards, resource filters, no implied actions
CREATE TEMP TABLE matching (n int, granted text[], required text);
INSERT INTO matching VALUES
    -- the examples of the scope reference (README, Scopes)
    (1, ARRAY['runs:*'], 'runs:read'),
    (2, ARRAY['*:read'], 'projects/42:read'),
    (3, ARRAY['projects/42/*:read'], 'projects/42/runs/7:read'),
    (4, ARRAY['projects/42/*:read'], 'projects/43/runs:read'),
    (5, ARRAY['*'], 'anything/at/all:admin'),
    -- no action implies another
    (6, ARRAY['runs:write'], 'runs:read'),
    (7, ARRAY['runs:admin'], 'runs:read'),
    (8, ARRAY['runs:admin'], 'runs:delete'),
    -- a middle '*' is one segment; a trailing '*' is that segment and below, never zero
    (9, ARRAY['projects/*/runs:read'], 'projects/1/runs:read'),
    (10, ARRAY['projects/*/runs:read'], 'projects/1/2/runs:read'),
    (11, ARRAY['projects/*:read'], 'projects:read'),
    (12, ARRAY['projects/*:read'], 'projects/1:read'),
    (13, ARRAY['projects/*:read'], 'projects/1/runs/2/steps:read'),
    (14, ARRAY['*:read'], 'a/b/c:read'),
    (15, ARRAY['*:read'], 'a/b/c:write'),
    -- a plain resource does not cover its sub-resources
    (16, ARRAY['runs:read'], 'runs/1:read'),
    (17, ARRAY['projects/42:read'], 'projects/42/runs:read'),
    -- only '*' grants '*'; a pattern is granted only by a covering pattern
    (18, ARRAY['runs:*'], '*'),
    (19, ARRAY['*'], '*'),
    (20, ARRAY['projects/*:read'], 'projects/*/runs:read'),
    (21, ARRAY['projects/*/runs:read'], 'projects/*:read'),
    -- several scopes: any one suffices
    (22, ARRAY['runs:read', 'projects/7:write'], 'projects/7:write'),
    (23, ARRAY['runs:read', 'projects/7:write'], 'projects/7:read'),
    -- no scopes at all
    (24, ARRAY[]::text[], 'runs:read'),
    -- malformed required scopes are never granted (fail closed)
    (25, ARRAY['*'], 'not a scope'),
    (26, ARRAY['*'], 'Runs:read'),
    (27, ARRAY['*'], ''),
    -- NULL required_scope: no scope check
    (28, ARRAY[]::text[], NULL);
DELETE FROM scope_catalog;  -- (as superuser, to issue the cases freely)
SELECT c.n, c.granted, c.required, v.valid, v.reason
  FROM matching c,
       LATERAL api_key_issue('match ' || c.n, 'service', 'development', c.granted) i,
       LATERAL api_key_verify(i.key, NULL, c.required) v
 ORDER BY c.n;

rollback;
