\set ON_ERROR_ROLLBACK on
\set SHOW_CONTEXT never
-- Leaked keys: api_key_report_leaked revokes each presented string that is a key
-- issued here, with reason 'leaked: <source>', audited; it returns their prefixes and
-- ignores everything else.
begin;
SET search_path = api_keys, public;
SET api_keys.argon2_memory_kib = 64;
SET api_keys.argon2_iterations = 1;

CREATE ROLE regress_leak_admin IN ROLE api_keys_admin;
CREATE ROLE regress_leak_plain;
CREATE ROLE regress_leak_verifier IN ROLE api_keys_verifier;
GRANT regress_leak_plain TO CURRENT_USER;

-- keys in every state, of two owners
SELECT key AS active, prefix AS active_p FROM api_key_issue('active', 'service', 'production', owner => 'carol') \gset
SELECT key AS suspended, prefix AS suspended_p, id AS suspended_id FROM api_key_issue('suspended', 'service', 'production', owner => 'dave') \gset
SELECT key AS revoked, id AS revoked_id FROM api_key_issue('revoked', 'service', 'production') \gset
SELECT key AS expired, prefix AS expired_p, id AS expired_id FROM api_key_issue('expired', 'user', 'staging') \gset
SELECT key AS unreported FROM api_key_issue('unreported', 'service', 'production') \gset
SELECT 1 FROM api_key_suspend(:'suspended_id'::uuid);
SELECT 1 FROM api_key_revoke(:'revoked_id'::uuid, 'earlier');
SELECT 1 FROM api_key_set_status(:'expired_id'::uuid, 'expired');

-- a scanner's report: keys twice, a wrong secret for a real prefix (valid checksum),
-- another installation's key, junk, an empty string, NULL, bytes of another shape
SELECT regress.forge_key(:'active_p', repeat('A', 43)) AS forged \gset
SELECT count(*) AS revoked_now,
       array_agg(r ORDER BY r) = (SELECT array_agg(p ORDER BY p) FROM unnest(ARRAY[:'active_p', :'suspended_p', :'expired_p']) p) AS exactly_these
  FROM api_key_report_leaked(ARRAY[:'active', :'suspended', :'active', :'revoked', :'expired',
                                   :'forged', regress.forge_key('zz_live_AAAAAAAAAAAA', repeat('B', 43)),
                                   'ak_live_junk', '', NULL, repeat('ak_', 1000)],
                             '  github secret scanning ') r;
SELECT name, status, status_reason FROM keys ORDER BY name;
SELECT k.name, a.action, a.old_status, a.new_status, a.reason, a.actor = current_user AS actor
  FROM audit_log a JOIN keys k ON k.id = a.key_id
 WHERE a.reason LIKE 'leaked:%' ORDER BY k.name;
-- verification agrees at once
SELECT valid, reason FROM api_key_verify(:'active');
-- reported again: nothing left to revoke
SELECT count(*) FROM api_key_report_leaked(ARRAY[:'active', :'suspended'], 'again');
SELECT count(*) FROM api_key_report_leaked('{}', 'nothing');

-- keys are found inside the strings (a scanner's output lines): padded, quoted, after
-- `token=`, two in one line; within the first 4 KiB of each string
SELECT key AS padded FROM api_key_issue('padded', 'service', 'production') \gset
SELECT key AS quoted FROM api_key_issue('quoted', 'service', 'production') \gset
SELECT key AS assigned FROM api_key_issue('assigned', 'service', 'production') \gset
SELECT key AS too_far FROM api_key_issue('too far', 'service', 'production') \gset
SELECT count(*) FROM api_key_report_leaked(
    ARRAY[E' \t' || :'padded' || E'\r\n',
          format('config.json:3: "api_key": "%s", token=%s;', :'quoted', :'assigned'),
          repeat('x', 4096) || :'too_far'],
    'log lines');
SELECT name, status, status_reason FROM keys
 WHERE name IN ('padded', 'quoted', 'assigned', 'too far') ORDER BY name;

-- bounds: 22023 before any work
SELECT regress.expect_error($$SELECT api_keys.api_key_report_leaked(NULL, 'x')$$);
SELECT regress.expect_error($$SELECT api_keys.api_key_report_leaked(array_fill('x'::text, ARRAY[1001]), 'x')$$);
-- ... and at most 1000 keys found in them (here 20 lines of 51 keys each)
SELECT regress.expect_error(format('SELECT api_keys.api_key_report_leaked(%L::text[], %L)',
    (SELECT array_agg(line) FROM (
        SELECT string_agg(regress.forge_key('ak_live_' || lpad(i::text, 12, '0'), repeat('A', 43)), ' ') AS line
          FROM generate_series(1, 1020) i GROUP BY i % 20) lines), 'x'));
SELECT regress.expect_error(format('SELECT api_keys.api_key_report_leaked(ARRAY[%L], NULL)', :'unreported'));
SELECT regress.expect_error(format('SELECT api_keys.api_key_report_leaked(ARRAY[%L], %L)', :'unreported', '  '));
SELECT regress.expect_error(format('SELECT api_keys.api_key_report_leaked(ARRAY[%L], %L)', :'unreported', repeat('s', 201)));
SELECT status FROM keys WHERE name = 'unreported';

-- only admins: a plain role and a verifier get 42501, even for their own key
SET ROLE regress_leak_plain;
SELECT key AS own FROM api_keys.api_key_issue('own', 'user', 'development') \gset
SELECT regress.expect_error(format('SELECT api_keys.api_key_report_leaked(ARRAY[%L], %L)', :'own', 'me'));
SET ROLE regress_leak_verifier;
SELECT regress.expect_error(format('SELECT api_keys.api_key_report_leaked(ARRAY[%L], %L)', :'own', 'me'));
SET ROLE regress_leak_admin;
SELECT count(*) FROM api_keys.api_key_report_leaked(ARRAY[:'own', :'unreported'], 'pastebin');
RESET ROLE;
SELECT name, status, status_reason, (SELECT actor FROM audit_log a WHERE a.key_id = k.id AND a.action = 'revoked') AS actor
  FROM keys k WHERE name IN ('own', 'unreported') ORDER BY name;
rollback;
