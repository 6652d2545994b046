\set ON_ERROR_ROLLBACK on
\set SHOW_CONTEXT never
-- Input bounds: every field a role can set has a limit, refused with 22023 and a hint
-- naming it before any hashing; direct admin UPDATEs obey the same limits; rows from
-- before the limits stay manageable and their audit entries stay small.
begin;
SET search_path = api_keys, public;
SET api_keys.argon2_memory_kib = 64;
SET api_keys.argon2_iterations = 1;
CREATE ROLE regress_plain;
CREATE ROLE regress_admin IN ROLE api_keys_admin;
SET ROLE regress_plain;

-- at each limit: accepted
SELECT count(*) AS issued_at_limits FROM api_key_issue(
    repeat('n', 200), 'service', 'development',
    scopes => (SELECT array_agg(format('r%s:read', g)) FROM generate_series(1, 256) g),
    description => repeat('d', 2000),
    allowed_cidrs => (SELECT array_agg(format('10.%s.%s.0/24', g / 256, g % 256)::cidr) FROM generate_series(1, 256) g),
    metadata => jsonb_build_object('k', repeat('m', 16384 - 9)));  -- {"k": "…"}: 16384 bytes
SELECT count(*) AS multibyte_name_at_limit FROM api_key_issue(repeat('é', 200), 'service', 'development');

-- one over each limit: 22023 naming the field, with the limit in the hint
SELECT label, regress.expect_error(stmt) FROM (VALUES
    ('name', format('SELECT api_key_issue(%L, ''service'', ''development'')', repeat('n', 201))),
    ('multibyte name', format('SELECT api_key_issue(%L, ''service'', ''development'')', repeat('é', 201))),
    ('description', format('SELECT api_key_issue(''k'', ''service'', ''development'', description => %L)', repeat('d', 2001))),
    ('metadata', format('SELECT api_key_issue(''k'', ''service'', ''development'', metadata => %L)', jsonb_build_object('k', repeat('m', 16384 - 8)))),
    ('scopes', 'SELECT api_key_issue(''k'', ''service'', ''development'', scopes => (SELECT array_agg(format(''r%s:read'', g)) FROM generate_series(1, 257) g))'),
    ('120,000 scopes', 'SELECT api_key_issue(''k'', ''service'', ''development'', scopes => (SELECT array_agg(format(''r%s:read'', g)) FROM generate_series(1, 120000) g))'),
    ('allowed_cidrs', 'SELECT api_key_issue(''k'', ''service'', ''development'', allowed_cidrs => (SELECT array_agg(format(''10.%s.%s.0/24'', g / 256, g % 256)::cidr) FROM generate_series(1, 257) g))'),
    ('a long scope', format('SELECT api_key_issue(''k'', ''service'', ''development'', scopes => ARRAY[%L])', repeat('a', 1000) || ':read')),
    ('a huge scope', format('SELECT api_key_issue(''k'', ''service'', ''development'', scopes => ARRAY[%L])', repeat('a', 100000) || ':read')),
    ('owner, bounded before it is named', format('SELECT api_key_issue(''k'', ''service'', ''development'', owner => %L)', repeat('o', 201))),
    ('list owner', format('SELECT api_key_list(owner => %L)', repeat('o', 201)))
  ) AS t(label, stmt);

-- updates and status changes of the role's own key
SELECT id AS key_id FROM api_key_issue('mine', 'service', 'development') \gset
SELECT label, regress.expect_error(stmt) FROM (VALUES
    ('update name', format('SELECT api_key_update(%L, name => %L)', :'key_id', repeat('n', 201))),
    ('update description', format('SELECT api_key_update(%L, description => %L)', :'key_id', repeat('d', 2001))),
    ('update metadata', format('SELECT api_key_update(%L, metadata => %L)', :'key_id', jsonb_build_object('k', repeat('m', 20000)))),
    ('update scopes', format('SELECT api_key_update(%L, scopes => (SELECT array_agg(format(''r%%s:read'', g)) FROM generate_series(1, 257) g))', :'key_id')),
    ('update cidrs', format('SELECT api_key_update(%L, allowed_cidrs => (SELECT array_agg(format(''10.%%s.%%s.0/24'', g / 256, g %% 256)::cidr) FROM generate_series(1, 257) g))', :'key_id')),
    ('suspend reason', format('SELECT api_key_suspend(%L, %L)', :'key_id', repeat('r', 1001))),
    ('revoke reason', format('SELECT api_key_revoke(%L, %L)', :'key_id', repeat('r', 1001))),
    ('set_status reason', format('SELECT api_key_set_status(%L, ''revoked'', %L)', :'key_id', repeat('r', 1001))),
    ('list search', format('SELECT api_key_list(search => %L)', repeat('s', 201))),
    ('list order_by', format('SELECT api_key_list(order_by => %L)', repeat('x', 101))),
    ('actor setting', format('SET api_keys.actor = %L', repeat('a', 201)))
  ) AS t(label, stmt);
SELECT status, name FROM key_list WHERE id = :'key_id';
SELECT count(*) AS suspended_at_limit FROM api_key_suspend(:'key_id', repeat('r', 1000));
SELECT length(set_config('api_keys.actor', repeat('a', 200), true)) AS actor_at_limit;
RESET api_keys.actor;

-- the scope texts has_scope and require_scope are asked: over 200 bytes is no scope
SELECT has_scope(repeat('a', 10000) || ':read') AS long_has_scope, has_scope(NULL) AS null_has_scope;
SELECT regress.expect_error(format('SELECT require_scope(%L)', repeat('a', 10000) || ':read'));
RESET ROLE;

-- admins: register_scope's description, and direct UPDATEs of api_keys.keys
SET ROLE regress_admin;
SELECT regress.expect_error(format('SELECT api_key_register_scope(''runs'', ''read'', %L)', repeat('d', 2001)));
SELECT regress.expect_error(format('SELECT api_key_register_scope(%L, ''read'')', repeat('r', 201)));
SELECT regress.expect_error(format('SELECT api_key_issue(''k'', ''service'', ''development'', owner => %L)', repeat('o', 201)));
SELECT count(*) AS owner_at_limit FROM api_key_issue('k', 'service', 'development', owner => repeat('o', 200));
SELECT label, regress.expect_error(stmt) FROM (VALUES
    ('name', format('UPDATE api_keys.keys SET name = %L WHERE id = %L', repeat('n', 201), :'key_id')),
    ('owner', format('UPDATE api_keys.keys SET owner = %L WHERE id = %L', repeat('o', 201), :'key_id')),
    ('metadata', format('UPDATE api_keys.keys SET metadata = %L WHERE id = %L', jsonb_build_object('k', repeat('m', 20000)), :'key_id')),
    ('scopes', format('UPDATE api_keys.keys SET scopes = (SELECT array_agg(format(''r%%s:read'', g)) FROM generate_series(1, 257) g) WHERE id = %L', :'key_id')),
    ('cidrs', format('UPDATE api_keys.keys SET allowed_cidrs = (SELECT array_agg(format(''10.%%s.%%s.0/24'', g / 256, g %% 256)::cidr) FROM generate_series(1, 257) g) WHERE id = %L', :'key_id'))
  ) AS t(label, stmt);
RESET ROLE;

-- a row written before the limits (made here with the triggers off) can still be
-- revoked and edited; its oversized value is audited by size, not copied
SET session_replication_role = replica;
UPDATE keys SET description = repeat('x', 300000), metadata = jsonb_build_object('k', repeat('m', 100000))
 WHERE id = :'key_id';
SET session_replication_role = origin;
SELECT name FROM api_key_update(:'key_id', name => 'renamed');
SELECT description FROM api_key_update(:'key_id', description => 'short now');
SELECT status FROM api_key_revoke(:'key_id', 'legacy row');
SELECT action, details, pg_column_size(details) < 1000 AS small
  FROM audit_log WHERE key_id = :'key_id' ORDER BY id;
rollback;
