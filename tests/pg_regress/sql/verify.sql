\set ON_ERROR_ROLLBACK on
\set SHOW_CONTEXT never
-- api_key_verify: exactly one row for any input, the reason codes in their order of
-- precedence, CIDR rules, required_scope, and identity columns only when valid.
begin;
SET search_path = api_keys, public;
SET api_keys.argon2_memory_kib = 64;
SET api_keys.argon2_iterations = 1;

SELECT id AS k_id, key AS k, prefix AS k_prefix
  FROM api_key_issue('verify me', 'service', 'production', ARRAY['runs:read'],
                     expires_at => now() + interval '1 day', metadata => '{"x": 1}') \gset
-- the secret part of k (between the prefix and the checksum)
SELECT substr(:'k', length(:'k_prefix') + 2, 43) AS k_secret \gset

-- a valid key: every identity column filled and describing the key
SELECT valid, reason, key_id = :'k_id' AS same_id, owner, key_type, environment, scopes,
       expires_at = now() + interval '1 day' AS same_expiry
  FROM api_key_verify(:'k');
SELECT valid, reason FROM api_key_verify(:'k', '203.0.113.9', 'runs:read');

-- rejected inputs: always exactly one row, never an error, identity columns all NULL
CREATE TEMP TABLE inputs (label text PRIMARY KEY, input text);
INSERT INTO inputs VALUES
    ('null', NULL),
    ('empty', ''),
    ('garbage', 'not a key at all'),
    ('1 MB', repeat('x', 1024 * 1024)),
    ('1 MB of key', repeat(:'k', 15000)),
    ('key + space', :'k' || ' '),
    ('space + key', ' ' || :'k'),
    ('key + newline', :'k' || E'\n'),
    ('truncated', left(:'k', -1)),
    ('key + char', :'k' || 'a'),
    ('prefix only', :'k_prefix'),
    ('uppercased', upper(:'k')),
    ('wrong env tag', replace(:'k', '_live_', '_stage_')),
    ('wrong brand', 'zz' || substr(:'k', 3)),
    ('unicode', 'ák_live_' || repeat('é', 60)),
    ('sql', $$' OR 1=1 --$$),
    -- one character changed, anywhere: the checksum catches it
    ('changed in public id', overlay(:'k' PLACING CASE substr(:'k', 10, 1) WHEN 'a' THEN 'b' ELSE 'a' END FROM 10 FOR 1)),
    ('changed in secret', overlay(:'k' PLACING CASE substr(:'k', 40, 1) WHEN 'a' THEN 'b' ELSE 'a' END FROM 40 FOR 1)),
    ('changed in checksum', overlay(:'k' PLACING CASE right(:'k', 1) WHEN 'a' THEN 'b' ELSE 'a' END FROM length(:'k') FOR 1)),
    ('swapped case', overlay(:'k' PLACING CASE WHEN substr(:'k', 30, 1) ~ '[a-z]' THEN upper(substr(:'k', 30, 1))
                                                WHEN substr(:'k', 30, 1) ~ '[A-Z]' THEN lower(substr(:'k', 30, 1))
                                                ELSE CASE substr(:'k', 30, 1) WHEN '0' THEN '1' ELSE '0' END END
                         FROM 30 FOR 1));
SELECT i.label, count(*) AS rows, min(v.reason) AS reason, bool_or(v.valid) AS valid,
       bool_and(num_nulls(v.key_id, v.owner, v.key_type, v.environment, v.scopes, v.expires_at) = 6) AS identity_null
  FROM inputs i, LATERAL api_key_verify(i.input) v
 GROUP BY i.label ORDER BY i.label;
-- NULL for every argument
SELECT count(*) AS rows, min(reason) AS reason FROM api_key_verify(NULL, NULL, NULL);

-- a correct checksum but the wrong secret for a real prefix: invalid_secret.
-- regress.forge_key builds a correctly checksummed key: from k's secret, signing key id
-- and MAC it reproduces k
SELECT substr(:'k', length(:'k_prefix') + 2 + 43, 21) AS k_signature \gset
SELECT regress.forge_key(:'k_prefix', :'k_secret' || :'k_signature') = :'k' AS forge_reproduces_key;
-- k is signed, as is every key issued since 0.5.0, so a wrong secret for it never
-- reaches argon2: it is refused as forged, in the unsigned shape (no signature, which
-- k's row says it has) and with k's signature (whose MAC covers only k's secret);
-- signing.sql counts them as forged_signatures
SELECT valid, reason, num_nulls(key_id, owner, key_type, environment, scopes, expires_at) AS null_identity
  FROM api_key_verify(regress.forge_key(:'k_prefix', repeat('A', 43)));
SELECT valid, reason FROM api_key_verify(regress.forge_key(:'k_prefix', left(:'k_secret', 42) || CASE WHEN right(:'k_secret', 1) = 'x' THEN 'y' ELSE 'x' END || :'k_signature'));

-- a key issued before 0.5.0 is unsigned (keys.signing_key IS NULL): made here from a
-- new key with the triggers off (the guard forbids it). Its text is the unsigned shape
-- of the same secret, <prefix>_<secret 43><checksum 6>; the stored hash is of that secret
SELECT id AS u_id, key AS u_signed, prefix AS u_prefix
  FROM api_key_issue('issued before 0.5.0', 'service', 'production') \gset
SET session_replication_role = replica;
UPDATE keys SET signing_key = NULL WHERE id = :'u_id';
RESET session_replication_role;
SELECT substr(:'u_signed', length(:'u_prefix') + 2, 43) AS u_secret \gset
SELECT regress.forge_key(:'u_prefix', :'u_secret') AS u \gset
SELECT length(:'u') - length(:'u_prefix') - 1 AS secret_and_checksum_len,
       :'u' ~ ('^' || key_pattern() || '$') AS matches_pattern;
-- ... it verifies, unsigned
SELECT valid, reason, key_id = :'u_id' AS same_id FROM api_key_verify(:'u');
-- ... and a signature on it is a forgery: its row names no signing key
SELECT valid, reason FROM api_key_verify(:'u_signed');
-- ... a wrong secret for it is refused by argon2 (within its prefix's budgets):
-- invalid_secret, no identity; a memo miss and an argon2 run, not a forged signature
CREATE TEMP TABLE counters_before AS SELECT counter, value FROM stats();
SELECT valid, reason, num_nulls(key_id, owner, key_type, environment, scopes, expires_at) AS null_identity
  FROM api_key_verify(regress.forge_key(:'u_prefix', repeat('A', 43)));
SELECT s.counter, s.value - b.value AS delta
  FROM stats() s JOIN counters_before b USING (counter)
 WHERE s.counter IN ('memo_hits', 'memo_misses', 'argon2_runs', 'argon2_throttled',
                     'forged_signatures', 'verify_invalid_secret')
 ORDER BY s.counter;
-- ... also when only the last character of the secret differs
SELECT valid, reason FROM api_key_verify(regress.forge_key(:'u_prefix', left(:'u_secret', 42) || CASE WHEN right(:'u_secret', 1) = 'x' THEN 'y' ELSE 'x' END));
-- ... and the key still verifies
SELECT valid, reason FROM api_key_verify(:'u');

-- a correct checksum and an unknown prefix, in the unsigned shape: not_found (in the
-- signed shape its MAC fails first: invalid_secret, see signing.sql)
SELECT valid, reason, num_nulls(key_id, owner, key_type, environment, scopes, expires_at) AS null_identity
  FROM api_key_verify(regress.forge_key('ak_live_AAAAAAAAAAAA', :'k_secret'));
SELECT valid, reason FROM api_key_verify(regress.forge_key('ak_dev_zzzzzzzzzzzz', repeat('b', 43)));

-- suspended, then reactivated
SELECT status FROM api_key_suspend(:'k_id', 'investigating');
SELECT valid, reason, key_id, owner FROM api_key_verify(:'k');
SELECT status FROM api_key_reactivate(:'k_id');
SELECT valid, reason FROM api_key_verify(:'k');

-- the wrong secret of a suspended key is still invalid_secret (status is not revealed):
-- for the signed key refused as forged, for the unsigned one by the secret check
SELECT status FROM api_key_suspend(:'k_id');
SELECT reason FROM api_key_verify(regress.forge_key(:'k_prefix', repeat('A', 43)));
SELECT status FROM api_key_reactivate(:'k_id');
SELECT status FROM api_key_suspend(:'u_id');
SELECT reason FROM api_key_verify(regress.forge_key(:'u_prefix', repeat('B', 43)));
SELECT status FROM api_key_reactivate(:'u_id');

-- expired at once when expires_at has passed, before any sweep changes the status
-- (a superuser moves expires_at into the past directly)
SELECT id AS e_id, key AS e FROM api_key_issue('expiring', 'service', 'production',
                                               expires_at => now() + interval '1 hour') \gset
SELECT valid, reason FROM api_key_verify(:'e');
SELECT regress.backdate(:'e_id', interval '1 second');
SELECT k.status AS stored_status, v.valid, v.reason, v.key_id, v.expires_at
  FROM keys k, api_key_verify(:'e') v WHERE k.id = :'e_id';
-- once past expires_at the key is terminal: not even a superuser moves expires_at back
SELECT regress.expect_error(format('UPDATE api_keys.keys SET expires_at = now() + interval %L WHERE id = %L', '1 day', :'e_id'));
SELECT reason FROM api_key_verify(:'e');
-- exactly at expires_at it is expired too
SELECT id AS e4_id, key AS e4 FROM api_key_issue('expiring now', 'service', 'production',
                                                 expires_at => now() + interval '1 hour') \gset
SELECT regress.backdate(:'e4_id', interval '0');
SELECT valid, reason FROM api_key_verify(:'e4');

-- expired through set_status
SELECT id AS e2_id, key AS e2 FROM api_key_issue('ended', 'service', 'production') \gset
SELECT status FROM api_key_set_status(:'e2_id', 'expired');
SELECT valid, reason FROM api_key_verify(:'e2');

-- a key issued to expire in a second, checked 1.2 seconds of wall-clock time later in the
-- same transaction: expired at once (statement time, not transaction start).
SELECT id AS e3_id, key AS e3 FROM api_key_issue('a second', 'service', 'production',
                                                 expires_at => clock_timestamp() + interval '1 second') \gset
SELECT pg_sleep(1.2);
SELECT clock_timestamp() > expires_at AS past_on_the_clock FROM keys WHERE id = :'e3_id';
SELECT valid, reason FROM api_key_verify(:'e3');

-- revoked
SELECT id AS r_id, key AS r FROM api_key_issue('to revoke', 'service', 'production') \gset
SELECT status FROM api_key_revoke(:'r_id', 'leaked');
SELECT valid, reason, key_id FROM api_key_verify(:'r');

-- precedence: revoked outranks expired outranks suspended outranks network and scope
SELECT id AS p_id, key AS p FROM api_key_issue('precedence', 'service', 'production', ARRAY['runs:read'],
                                               allowed_cidrs => ARRAY['10.0.0.0/8']::cidr[]) \gset
SELECT reason FROM api_key_verify(:'p', '192.0.2.1', 'runs:write');
SELECT status FROM api_key_suspend(:'p_id');
SELECT reason FROM api_key_verify(:'p', '192.0.2.1', 'runs:write');
SELECT regress.backdate(:'p_id', interval '1 minute');
SELECT reason FROM api_key_verify(:'p', '192.0.2.1', 'runs:write');
SELECT status FROM api_key_revoke(:'p_id', 'done');
SELECT reason FROM api_key_verify(:'p', '192.0.2.1', 'runs:write');

-- deleted: not_found
SELECT id AS d_id, key AS d FROM api_key_issue('to delete', 'service', 'production') \gset
SELECT valid, reason FROM api_key_verify(:'d');
SELECT name FROM api_key_delete(:'d_id');
SELECT valid, reason, key_id FROM api_key_verify(:'d');

-- IPv4-only rules: IPv4 clients inside pass; outside, any IPv6 client and no client fail
SELECT key AS v4 FROM api_key_issue('v4 only', 'service', 'production',
                                    allowed_cidrs => ARRAY['10.0.0.0/8', '192.168.1.0/24']::cidr[]) \gset
SELECT c.client_ip, v.valid, v.reason, v.key_id IS NOT NULL AS identity_shown
  FROM (VALUES (1, '10.1.2.3'::inet), (2, '192.168.1.200'), (3, '10.0.0.1/32'),
               (4, '::ffff:10.9.8.7'), (5, '11.0.0.1'), (6, '192.168.2.1'), (7, '::1'),
               (8, '2001:db8::1'), (9, NULL)) AS c(n, client_ip),
       LATERAL api_key_verify(:'v4', c.client_ip) v
 ORDER BY c.n;

-- IPv6-only rules: no IPv4 client passes
SELECT key AS v6 FROM api_key_issue('v6 only', 'service', 'production',
                                    allowed_cidrs => ARRAY['2001:db8::/32']::cidr[]) \gset
SELECT c.client_ip, v.valid, v.reason
  FROM (VALUES (1, '2001:db8::5'::inet), (2, '2001:db9::5'), (3, '10.1.2.3'), (4, NULL)) AS c(n, client_ip),
       LATERAL api_key_verify(:'v6', c.client_ip) v
 ORDER BY c.n;

-- a wildcard IPv4 rule admits every IPv4 client and still no IPv6 client
SELECT key AS w4 FROM api_key_issue('any v4', 'service', 'production',
                                    allowed_cidrs => ARRAY['0.0.0.0/0']::cidr[]) \gset
SELECT c.client_ip, v.reason
  FROM (VALUES (1, '198.51.100.7'::inet), (2, '2001:db8::5'), (3, NULL)) AS c(n, client_ip),
       LATERAL api_key_verify(:'w4', c.client_ip) v
 ORDER BY c.n;

-- rules of both families: each family is matched against its own rules
SELECT key AS both FROM api_key_issue('both', 'service', 'production',
                                      allowed_cidrs => ARRAY['10.0.0.0/8', '2001:db8::/32']::cidr[]) \gset
SELECT c.client_ip, v.reason
  FROM (VALUES (1, '10.0.0.9'::inet), (2, '2001:db8::9'), (3, '172.16.0.1'), (4, 'fe80::1')) AS c(n, client_ip),
       LATERAL api_key_verify(:'both', c.client_ip) v
 ORDER BY c.n;

-- no rules: any client, and a NULL client, pass
SELECT c.client_ip, v.reason
  FROM (VALUES (1, '10.0.0.9'::inet), (2, '2001:db8::9'), (3, NULL)) AS c(n, client_ip),
       LATERAL api_key_verify(:'k', c.client_ip) v
 ORDER BY c.n;

-- rules removed by api_key_update ('{}'): a NULL client passes again
SELECT key_id AS v4_id FROM api_key_verify(:'v4', '10.0.0.1') \gset
SELECT allowed_cidrs FROM api_key_update(:'v4_id', allowed_cidrs => '{}');
SELECT reason FROM api_key_verify(:'v4');

-- required_scope: granted, not granted, NULL (no check), malformed (fails closed)
SELECT s.required, v.valid, v.reason, v.key_id IS NOT NULL AS identity_shown
  FROM (VALUES (1, 'runs:read'), (2, 'runs:write'), (3, 'runs/1:read'), (4, 'projects:read'),
               (5, NULL), (6, '*'), (7, 'garbage'), (8, ''), (9, 'Runs:read')) AS s(n, required),
       LATERAL api_key_verify(:'k', NULL, s.required) v
 ORDER BY s.n;

-- a huge required_scope is just not granted
SELECT count(*) AS rows, min(reason) AS reason FROM api_key_verify(:'k', NULL, repeat('a', 1024 * 1024));

-- the resource-filter examples of the scope reference (README), through required_scope
CREATE TEMP TABLE scope_cases (n int, granted text[], required text);
INSERT INTO scope_cases VALUES
    (1, ARRAY['runs:*'], 'runs:read'),
    (2, ARRAY['*:read'], 'projects/42:read'),
    (3, ARRAY['projects/42/*:read'], 'projects/42/runs/7:read'),
    (4, ARRAY['projects/42/*:read'], 'projects/43/runs:read'),
    (5, ARRAY['runs:write'], 'runs:read'),
    (6, ARRAY['*'], 'anything/at/all:admin');
SELECT c.n, c.granted, c.required, v.valid, v.reason
  FROM scope_cases c,
       LATERAL api_key_issue('scope case ' || c.n, 'service', 'development', c.granted) i,
       LATERAL api_key_verify(i.key, NULL, c.required) v
 ORDER BY c.n;

-- network is checked before scope
SELECT reason FROM api_key_verify(:'both', '172.16.0.1', 'runs:read');

-- verification works in a read-only transaction (last: the transaction stays read-only;
-- without psql's per-statement savepoints, which would undo SET TRANSACTION)
\set ON_ERROR_ROLLBACK off
SET TRANSACTION READ ONLY;
SHOW transaction_read_only;
SELECT regress.expect_error($$SELECT * FROM api_keys.api_key_issue('x', 'service', 'production')$$);
SELECT valid, reason FROM api_key_verify(:'k');
SELECT reason FROM api_key_verify(:'r');
rollback;
