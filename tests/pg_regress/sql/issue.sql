\set ON_ERROR_ROLLBACK on
\set SHOW_CONTEXT never
-- api_key_issue: the key it returns, what it stores, and every parameter it rejects.
begin;
SET search_path = api_keys, public;
SET api_keys.argon2_memory_kib = 64;
SET api_keys.argon2_iterations = 1;

-- the defaults: full access, no expiry, no CIDRs, owner = current_user, setting limits
SELECT id AS k1_id, key AS k1, prefix AS k1_prefix, expires_at IS NULL AS never_expires
  FROM api_key_issue('ci deploy', 'service', 'production') \gset
SELECT :'never_expires' AS never_expires;
SELECT name, description, key_type, environment, owner, created_by, status, status_reason,
       scopes, allowed_cidrs, expires_at, rate_limit_per_minute, rate_limit_per_hour,
       metadata, rotated_from, last_used_at, last_used_ip,
       created_at = now() AS created_now
  FROM key_list WHERE id = :'k1_id';

-- the key has the documented shape and matches api_keys.key_pattern(): after the prefix,
-- 70 characters (secret 43, signing key id 4, MAC 17, checksum 6; signing.sql checks
-- the parts)
SELECT :'k1' ~ ('^' || key_pattern() || '$') AS matches_pattern,
       :'k1_prefix' ~ '^ak_live_[0-9A-Za-z]{12}$' AS prefix_shape,
       starts_with(:'k1', :'k1_prefix' || '_') AS key_starts_with_prefix,
       length(:'k1') - length(:'k1_prefix') - 1 AS after_prefix_len;
SELECT key_pattern();

-- environment tags: live, stage, dev
SELECT environment, split_part(prefix, '_', 2) AS tag, prefix ~ '^ak_[a-z]+_[0-9A-Za-z]{12}$' AS shape
  FROM (SELECT 'production'::environment AS environment, (api_key_issue('p', 'user', 'production')).prefix
        UNION ALL
        SELECT 'staging', (api_key_issue('s', 'user', 'staging')).prefix
        UNION ALL
        SELECT 'development', (api_key_issue('d', 'user', 'development')).prefix) t
 ORDER BY 1;

-- prefixes are unique and random; keys differ
SELECT count(DISTINCT prefix) AS distinct_prefixes, count(DISTINCT key) AS distinct_keys,
       count(*) AS issued
  FROM generate_series(1, 20) g, LATERAL api_key_issue('batch ' || g, 'service', 'development');

-- only an argon2id hash (settings' parameters) is stored, never the secret or the key
SELECT secret_hash ~ '^\$argon2id\$v=19\$m=64,t=1,p=1\$' AS argon2id_phc,
       strpos(secret_hash, substr(:'k1', length(:'k1_prefix') + 2, 43)) = 0 AS secret_not_in_hash
  FROM keys WHERE id = :'k1_id';
SELECT count(*) AS rows_containing_the_key
  FROM keys k WHERE strpos(to_jsonb(k)::text, substr(:'k1', length(:'k1_prefix') + 2)) > 0;

-- the argon2 settings are read for each new key
SET api_keys.argon2_memory_kib = 128;
SET api_keys.argon2_iterations = 2;
SELECT id AS k2_id FROM api_key_issue('costlier', 'service', 'production') \gset
SELECT secret_hash ~ '^\$argon2id\$v=19\$m=128,t=2,p=1\$' AS uses_new_settings FROM keys WHERE id = :'k2_id';
SET api_keys.argon2_memory_kib = 64;
SET api_keys.argon2_iterations = 1;

-- the key verifies; the returned columns describe it
SELECT valid, reason, key_id = :'k1_id' AS same_id FROM api_key_verify(:'k1');

-- every parameter is stored as given (and scopes / CIDRs normalised: deduplicated)
SELECT id AS k3_id, expires_at = now() + interval '30 days' AS returned_expiry
  FROM api_key_issue('  reporting  ', 'user', 'staging',
                     scopes => ARRAY['runs:read', 'projects/42/*:write', 'runs:read'],
                     description => 'nightly reports',
                     expires_at => now() + interval '30 days',
                     allowed_cidrs => ARRAY['10.0.0.0/8', '192.168.1.0/24', '10.0.0.0/8', '2001:db8::/32']::cidr[],
                     rate_limit_per_minute => 5, rate_limit_per_hour => 50,
                     metadata => '{"team": "data"}') \gset
SELECT :'returned_expiry' AS returned_expiry;
SELECT name, description, key_type, environment, scopes, allowed_cidrs,
       expires_at = now() + interval '30 days' AS expiry_kept,
       rate_limit_per_minute, rate_limit_per_hour, metadata
  FROM key_list WHERE id = :'k3_id';

-- 'infinity' as expires_at means never; an empty scope list is a key with no scopes;
-- NULL metadata is an empty object; '{}' CIDRs allow all
SELECT id AS k4_id, expires_at IS NULL AS never FROM api_key_issue('inf', 'service', 'production',
       scopes => '{}', expires_at => 'infinity', allowed_cidrs => '{}', metadata => NULL) \gset
SELECT :'never' AS never;
SELECT scopes, allowed_cidrs, expires_at, metadata FROM key_list WHERE id = :'k4_id';

-- a superuser (like api_keys_admin) may issue for another owner; created_by is the caller
SELECT id AS k5_id FROM api_key_issue('for someone', 'user', 'production', owner => 'someone_else') \gset
SELECT owner, created_by FROM key_list WHERE id = :'k5_id';

-- a wildcard CIDR is accepted with a WARNING, one per family
SELECT id AS k6_id FROM api_key_issue('open', 'service', 'production',
                                      allowed_cidrs => ARRAY['0.0.0.0/0', '::/0']::cidr[]) \gset
SELECT allowed_cidrs FROM key_list WHERE id = :'k6_id';

-- rejected: empty name (22023, names the field)
SELECT regress.expect_error($$SELECT * FROM api_key_issue('', 'service', 'production')$$);
SELECT regress.expect_error($$SELECT * FROM api_key_issue('   ', 'service', 'production')$$);
SELECT regress.expect_error($$SELECT * FROM api_key_issue(NULL, 'service', 'production')$$);

-- rejected: NULL key_type / environment
SELECT regress.expect_error($$SELECT * FROM api_key_issue('x', NULL, 'production')$$);
SELECT regress.expect_error($$SELECT * FROM api_key_issue('x', 'service', NULL)$$);

-- rejected: malformed scopes, NULL scopes, NULL scope
SELECT regress.expect_error($$SELECT * FROM api_key_issue('x', 'service', 'production', ARRAY['Runs:read'])$$);
SELECT regress.expect_error($$SELECT * FROM api_key_issue('x', 'service', 'production', ARRAY['runs'])$$);
SELECT regress.expect_error($$SELECT * FROM api_key_issue('x', 'service', 'production', ARRAY['runs:read', 'runs:Write'])$$);
SELECT regress.expect_error($$SELECT * FROM api_key_issue('x', 'service', 'production', ARRAY['a//b:read'])$$);
SELECT regress.expect_error($$SELECT * FROM api_key_issue('x', 'service', 'production', ARRAY[''])$$);
SELECT regress.expect_error($$SELECT * FROM api_key_issue('x', 'service', 'production', NULL)$$);
SELECT regress.expect_error($$SELECT * FROM api_key_issue('x', 'service', 'production', ARRAY[NULL])$$);

-- rejected: scope outside a non-empty catalog; the HINT lists the valid ones
SELECT resource, action FROM api_key_register_scope('runs', 'read');
SELECT resource, action FROM api_key_register_scope('projects/*', 'write');
SELECT regress.expect_error($$SELECT * FROM api_key_issue('x', 'service', 'production', ARRAY['runs:write'])$$);
SELECT regress.expect_error($$SELECT * FROM api_key_issue('x', 'service', 'production', ARRAY['runs:read', 'rnus:read'])$$);
SELECT id AS k7_id FROM api_key_issue('in catalog', 'service', 'production',
                                      ARRAY['runs:read', 'projects/7:write']) \gset
SELECT scopes FROM key_list WHERE id = :'k7_id';

-- rejected: expires_at not in the future
SELECT regress.expect_error($$SELECT * FROM api_key_issue('x', 'service', 'production', expires_at => now())$$);
SELECT regress.expect_error($$SELECT * FROM api_key_issue('x', 'service', 'production', expires_at => now() - interval '1 day')$$);
SELECT regress.expect_error($$SELECT * FROM api_key_issue('x', 'service', 'production', expires_at => '-infinity')$$);

-- rejected: non-positive rate limits
SELECT regress.expect_error($$SELECT * FROM api_key_issue('x', 'service', 'production', rate_limit_per_minute => 0)$$);
SELECT regress.expect_error($$SELECT * FROM api_key_issue('x', 'service', 'production', rate_limit_per_hour => -1)$$);

-- rejected: NULL inside allowed_cidrs, metadata that is not an object, empty owner
SELECT regress.expect_error($$SELECT * FROM api_key_issue('x', 'service', 'production', allowed_cidrs => ARRAY[NULL]::cidr[])$$);
SELECT regress.expect_error($$SELECT * FROM api_key_issue('x', 'service', 'production', metadata => '[1]')$$);
SELECT regress.expect_error($$SELECT * FROM api_key_issue('x', 'service', 'production', owner => '')$$);

-- rejected: an owner other than self, for a role that is not api_keys_admin (42501)
CREATE ROLE regress_alice;
SET ROLE regress_alice;
SELECT regress.expect_error($$SELECT * FROM api_key_issue('x', 'service', 'production', owner => 'postgres')$$);
SELECT id AS k8_id FROM api_key_issue('mine', 'service', 'production', owner => 'regress_alice') \gset
SELECT owner, created_by FROM key_list WHERE id = :'k8_id';
RESET ROLE;

-- nothing was stored by the rejected calls
SELECT count(*) AS keys_named_x FROM keys WHERE name = 'x';

-- the brand setting: new keys and key_pattern() follow it; older keys keep verifying
SET api_keys.brand = 'acme2024';
SELECT prefix ~ '^acme2024_stage_[0-9A-Za-z]{12}$' AS branded,
       key ~ ('^' || key_pattern() || '$') AS matches_new_pattern
  FROM api_key_issue('branded', 'service', 'staging');
SELECT valid, reason FROM api_key_verify(:'k1');
-- an invalid brand refuses to mint (22023)
SET api_keys.brand = 'Bad!';
SELECT regress.expect_error($$SELECT * FROM api_key_issue('x', 'service', 'production')$$);
RESET api_keys.brand;

rollback;
