\set ON_ERROR_ROLLBACK on
\set SHOW_CONTEXT never
-- Listing: the key_list view, api_key_list's filters, search, ordering and paging, and
-- the expiring_soon view.
begin;
SET search_path = api_keys, public;
SET api_keys.argon2_memory_kib = 64;
SET api_keys.argon2_iterations = 1;

-- fixtures: keys of two owners, three environments and every status
SELECT id AS alpha_id, prefix AS alpha_prefix
  FROM api_key_issue('Alpha Service', 'service', 'production', owner => 'regress_alice',
                     expires_at => now() + interval '3 days') \gset
SELECT id AS beta_id FROM api_key_issue('beta worker', 'service', 'staging', owner => 'regress_alice',
                                        expires_at => now() + interval '20 days') \gset
SELECT id AS gamma_id FROM api_key_issue('GAMMA cli', 'user', 'development', owner => 'regress_bob') \gset
SELECT id AS delta_id FROM api_key_issue('delta', 'user', 'production', owner => 'regress_bob',
                                         expires_at => now() + interval '1 day') \gset
SELECT id AS eps_id FROM api_key_issue('epsilon', 'service', 'production', owner => 'regress_bob',
                                       expires_at => now() + interval '2 days') \gset
SELECT id AS pct_id FROM api_key_issue('fifty%off', 'service', 'staging', owner => 'regress_carol') \gset
SELECT id AS pct2_id FROM api_key_issue('fifty-off', 'service', 'staging', owner => 'regress_carol') \gset
SELECT id AS us_id FROM api_key_issue('foo_war', 'service', 'staging', owner => 'regress_carol') \gset
SELECT id AS us2_id FROM api_key_issue('fooXwar', 'service', 'staging', owner => 'regress_carol') \gset
SELECT id AS bs_id FROM api_key_issue('back\slash', 'service', 'staging', owner => 'regress_carol') \gset
SELECT status FROM api_key_suspend(:'gamma_id', 'paused');
SELECT status FROM api_key_revoke(:'delta_id', 'gone');
SELECT status FROM api_key_set_status(:'eps_id', 'expired');

-- key_list columns: the contract's, then credits and owner limits (0.5.0); never the hash
SELECT attnum, attname FROM pg_attribute
 WHERE attrelid = 'api_keys.key_list'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum;
SELECT count(*) AS hash_columns FROM pg_attribute
 WHERE attrelid IN ('api_keys.key_list'::regclass, 'api_keys.expiring_soon'::regclass)
   AND attname ~ 'hash|secret' AND NOT attisdropped;
-- api_key_list returns key_list rows
SELECT pg_get_function_result('api_keys.api_key_list'::regproc);

-- no filters: every key (the superuser sees all), newest first by default
SELECT count(*) AS all_keys FROM api_key_list();
SELECT count(*) = (SELECT count(*) FROM keys) AS same_as_table FROM api_key_list();

-- filter by status (the effective status), environment, owner, and combinations
SELECT status, array_agg(name ORDER BY name COLLATE "C") FROM api_key_list(page_size => 1000) GROUP BY status ORDER BY status;
SELECT name FROM api_key_list(status => 'suspended');
SELECT name FROM api_key_list(status => 'revoked');
SELECT name FROM api_key_list(status => 'expired');
SELECT name FROM api_key_list(environment => 'production', order_by => 'name');
SELECT name FROM api_key_list(owner => 'regress_alice', order_by => 'name');
SELECT name FROM api_key_list(owner => 'regress_bob', environment => 'production', order_by => 'name');
SELECT name FROM api_key_list(status => 'active', environment => 'staging', owner => 'regress_carol') ORDER BY name COLLATE "C";
SELECT count(*) AS nobody FROM api_key_list(owner => 'regress_nobody');

-- search: name or prefix, case-insensitive
SELECT name FROM api_key_list(search => 'alpha');
SELECT name FROM api_key_list(search => 'gAmMa');
SELECT name FROM api_key_list(search => 'SERV');
SELECT name FROM api_key_list(search => lower(:'alpha_prefix'));
SELECT name FROM api_key_list(search => upper(substr(:'alpha_prefix', 9)));
SELECT count(*) AS no_match FROM api_key_list(search => 'no such key');
-- % and _ (and \) are literal characters, not wildcards
SELECT name FROM api_key_list(search => 'y%o');
SELECT name FROM api_key_list(search => 'o_w');
SELECT name FROM api_key_list(search => 'k\s');
SELECT count(*) AS percent_alone FROM api_key_list(search => '%');
-- search combines with the other filters
SELECT name FROM api_key_list(search => 'a', owner => 'regress_alice', status => 'active', order_by => 'name');

-- order_by: any whitelisted column plus asc/desc (case and spacing tolerated)
SELECT name FROM api_key_list(owner => 'regress_alice', order_by => 'name');
SELECT name FROM api_key_list(owner => 'regress_alice', order_by => 'name asc');
SELECT name FROM api_key_list(owner => 'regress_alice', order_by => 'name desc');
SELECT name FROM api_key_list(owner => 'regress_alice', order_by => '  NAME   DESC ');
SELECT name FROM api_key_list(owner => 'regress_bob', order_by => 'status');
SELECT name, expires_at IS NULL AS no_expiry FROM api_key_list(owner => 'regress_alice', order_by => 'expires_at desc');
SELECT name FROM api_key_list(owner => 'regress_alice', order_by => 'environment desc');
SELECT name FROM api_key_list(owner => 'regress_alice', order_by => 'environment');
-- NULLs sort last in either direction
SELECT name FROM api_key_list(owner => 'regress_bob', order_by => 'expires_at');
SELECT name FROM api_key_list(owner => 'regress_bob', order_by => 'expires_at desc');
-- the array and jsonb columns sort too
SELECT array_agg(l.scopes ORDER BY o) = (SELECT array_agg(k.scopes ORDER BY k.scopes DESC) FROM key_list k WHERE k.owner = 'regress_alice') AS sorted_by_scopes
  FROM api_key_list(owner => 'regress_alice', order_by => 'scopes desc') WITH ORDINALITY AS l(id, prefix, name, description, key_type, environment, owner, status, status_reason, scopes, allowed_cidrs, expires_at, created_at, created_by, last_used_at, last_used_ip, rotated_from, rate_limit_per_minute, rate_limit_per_hour, metadata, o);
SELECT count(*) AS rows_by_metadata FROM api_key_list(owner => 'regress_alice', order_by => 'metadata');
-- the default order is created_at desc
SELECT array_agg(id) = (SELECT array_agg(id ORDER BY created_at DESC, id) FROM key_list) AS default_is_created_at_desc
  FROM api_key_list(page_size => 1000);
-- anything else is 22023: unknown columns, the hash, expressions, two columns, injection
SELECT o AS order_by, regress.expect_error(format('SELECT * FROM api_keys.api_key_list(order_by => %L)', o))
  FROM unnest(ARRAY['secret_hash', 'nonexistent', 'name sideways', 'name desc, id', 'name desc id',
                    '1', 'lower(name)', '', 'name; DROP TABLE api_keys.keys --',
                    'name) UNION SELECT secret_hash FROM api_keys.keys --',
                    '"name"']) WITH ORDINALITY AS t(o, n) ORDER BY n;
SELECT regress.expect_error('SELECT * FROM api_keys.api_key_list(order_by => NULL)');
SELECT count(*) AS keys_still_there FROM keys;

-- page_size: 1 to 1000; page: 1 or more
SELECT regress.expect_error('SELECT * FROM api_keys.api_key_list(page_size => 0)');
SELECT regress.expect_error('SELECT * FROM api_keys.api_key_list(page_size => 1001)');
SELECT regress.expect_error('SELECT * FROM api_keys.api_key_list(page_size => -1)');
SELECT regress.expect_error('SELECT * FROM api_keys.api_key_list(page_size => NULL)');
SELECT regress.expect_error('SELECT * FROM api_keys.api_key_list(page => 0)');
SELECT count(*) AS page_size_1 FROM api_key_list(page_size => 1);
SELECT count(*) AS page_size_1000 FROM api_key_list(page_size => 1000);
-- the default page size is 50
SELECT count(*) AS issued FROM generate_series(1, 55) g, LATERAL api_key_issue('bulk ' || g, 'user', 'development');
SELECT count(*) AS default_page FROM api_key_list();

-- paging walks the ordered list without gaps or overlaps
SELECT count(*) AS issued
  FROM unnest(ARRAY['page c', 'page a', 'page e', 'page b', 'page d']) n,
       LATERAL api_key_issue(n, 'service', 'production', owner => 'regress_dave');
SELECT p AS page, array_agg(name ORDER BY ord) AS names
  FROM generate_series(1, 4) p,
       LATERAL api_key_list(owner => 'regress_dave', order_by => 'name', page_size => 2, page => p)
               WITH ORDINALITY AS l(id, prefix, name, description, key_type, environment, owner, status,
                                    status_reason, scopes, allowed_cidrs, expires_at, created_at, created_by,
                                    last_used_at, last_used_ip, rotated_from, rate_limit_per_minute,
                                    rate_limit_per_hour, metadata, ord)
 GROUP BY p ORDER BY p;
SELECT name FROM api_key_list(owner => 'regress_dave', order_by => 'name desc', page_size => 3, page => 2);
SELECT count(*) AS past_the_end FROM api_key_list(owner => 'regress_dave', page_size => 2, page => 4);
SELECT count(*) AS far_past_the_end FROM api_key_list(owner => 'regress_dave', page_size => 1000, page => 2147483647);

-- effective status: 'expired' as soon as expires_at has passed, before any sweep
SELECT regress.backdate(:'beta_id', interval '1 second');
SELECT l.status AS listed, k.status AS stored FROM key_list l JOIN keys k USING (id) WHERE id = :'beta_id';
SELECT name FROM api_key_list(status => 'expired', order_by => 'name');
SELECT count(*) AS beta_active FROM api_key_list(status => 'active', search => 'beta');
-- a suspended key past its expiry is expired too; a revoked one stays revoked
SELECT regress.backdate(:'gamma_id', interval '1 second');
SELECT name, status FROM key_list WHERE id IN (:'gamma_id', :'delta_id') ORDER BY name;

-- expiring_soon: active keys expiring within api_keys.expiry_warning (default 7 days)
SHOW api_keys.expiry_warning;
SELECT name, status FROM expiring_soon ORDER BY expires_at;
SET api_keys.expiry_warning = '1d';
SELECT name FROM expiring_soon ORDER BY expires_at;
SET api_keys.expiry_warning = '30d';
SELECT name FROM expiring_soon ORDER BY expires_at;
RESET api_keys.expiry_warning;
-- a suspended key expiring soon is not listed (only active ones)
SELECT status FROM api_key_suspend(:'alpha_id');
SELECT count(*) AS alpha_listed FROM expiring_soon WHERE id = :'alpha_id';
SELECT status FROM api_key_reactivate(:'alpha_id');
-- expiring_soon has key_list's columns
SELECT (SELECT array_agg(attname::text ORDER BY attnum) FROM pg_attribute
         WHERE attrelid = 'api_keys.expiring_soon'::regclass AND attnum > 0)
     = (SELECT array_agg(attname::text ORDER BY attnum) FROM pg_attribute
         WHERE attrelid = 'api_keys.key_list'::regclass AND attnum > 0) AS same_columns;

-- a plain role lists only its own keys, whatever filters it passes
CREATE ROLE regress_alice;
SET ROLE regress_alice;
SELECT name FROM api_key_list(order_by => 'name');
SELECT name FROM key_list ORDER BY name;
SELECT count(*) AS bobs_keys FROM api_key_list(owner => 'regress_bob');
SELECT count(*) AS gamma_found FROM api_key_list(search => 'gamma');
SELECT name FROM expiring_soon;
RESET ROLE;

rollback;
