\set ON_ERROR_ROLLBACK on
\set SHOW_CONTEXT never
-- Signed keys: the shape of a signed key and key_pattern(); a forged MAC, or a signed
-- key presented without its signature or with another signing key's id, is
-- invalid_secret and counted as forged; rotate_signing_key() (admins only, audited);
-- api_keys.signing_keys (superusers only, CHECKed); keys.signing_key (readable by
-- admins, never changed); issuing with no signing key; a deleted signing key refuses
-- its keys at once, and a rolled-back deletion restores them.
begin;
SET search_path = api_keys, public;
SET api_keys.argon2_memory_kib = 64;
SET api_keys.argon2_iterations = 1;
CREATE ROLE regress_plain;
CREATE ROLE regress_admin IN ROLE api_keys_admin;
CREATE ROLE regress_verifier IN ROLE api_keys_verifier;

-- the counters before (server-wide; pg_regress runs the files one at a time)
SELECT value AS forged_before FROM stats() WHERE counter = 'forged_signatures' \gset
SELECT value AS invalid_before FROM stats() WHERE counter = 'verify_invalid_secret' \gset

-- CREATE EXTENSION made one signing key
SELECT count(*) AS signing_keys, bool_and(id ~ '^[0-9A-Za-z]{4}$') AS id_shape,
       bool_and(octet_length(secret) = 32) AS secret_32_bytes
  FROM signing_keys;
SELECT id AS first_sk FROM signing_keys \gset

-- the shape: <prefix>_<secret 43><signing key id 4><MAC 17><checksum 6>, 91 characters
-- with the default brand, matched by key_pattern()
SET ROLE regress_plain;
SELECT id AS k_id, key AS k, prefix AS k_prefix
  FROM api_key_issue('signed', 'service', 'production') \gset
RESET ROLE;
SELECT length(:'k') AS key_length, length(:'k_prefix') AS prefix_length,
       starts_with(:'k', :'k_prefix' || '_') AS starts_with_prefix,
       :'k' ~ ('^' || key_pattern() || '$') AS matches_pattern,
       strpos(key_pattern(), '(?') = 0 AS no_non_capturing_group;
SELECT substr(:'k', length(:'k_prefix') + 2, 43) AS k_secret,
       substr(:'k', length(:'k_prefix') + 2 + 43, 4) AS k_sk,
       substr(:'k', length(:'k_prefix') + 2 + 47, 17) AS k_mac \gset
-- keys.signing_key is the newest signing key, and the id inside the key
SELECT signing_key = :'k_sk' AS row_names_id_in_key,
       signing_key = (SELECT id FROM signing_keys ORDER BY created_at DESC, id DESC LIMIT 1)
           AS row_names_newest_signing_key
  FROM keys WHERE id = :'k_id';
-- the pattern also matches the unsigned shape of keys from before 0.5.0, and nothing
-- between the two lengths
SELECT regress.forge_key(:'k_prefix', :'k_secret') ~ ('^' || key_pattern() || '$') AS matches_unsigned_shape,
       left(:'k', -1) ~ ('^' || key_pattern() || '$') AS matches_one_short,
       (:'k' || 'a') ~ ('^' || key_pattern() || '$') AS matches_one_long;

-- verification: the real key is ok; forgeries with a correct checksum (regress.forge_key)
-- are invalid_secret, whether the prefix exists or not, and reveal nothing
CREATE TEMP TABLE forgeries (label text PRIMARY KEY, input text);
INSERT INTO forgeries VALUES
    ('MAC changed in its last digit',
     regress.forge_key(:'k_prefix', :'k_secret' || :'k_sk' || left(:'k_mac', -1)
                                    || CASE right(:'k_mac', 1) WHEN '0' THEN '1' ELSE '0' END)),
    ('MAC over 96 bits',
     regress.forge_key(:'k_prefix', :'k_secret' || :'k_sk' || repeat('z', 17))),
    ('another secret, the real MAC',
     regress.forge_key(:'k_prefix', repeat('A', 43) || :'k_sk' || :'k_mac')),
    ('an unknown signing key id',
     regress.forge_key(:'k_prefix', :'k_secret' || CASE :'k_sk' WHEN 'zzzz' THEN 'yyyy' ELSE 'zzzz' END || :'k_mac')),
    ('the real MAC on an unknown prefix',
     regress.forge_key('ak_live_' || CASE substr(:'k_prefix', 9) WHEN repeat('Z', 12) THEN repeat('Y', 12) ELSE repeat('Z', 12) END,
                       :'k_secret' || :'k_sk' || :'k_mac')),
    ('signed key without its signature (unsigned shape)',
     regress.forge_key(:'k_prefix', :'k_secret'));
GRANT SELECT ON forgeries TO regress_verifier;
-- (each is of the key shape, so only the signature refuses it)
SELECT label, input ~ ('^' || key_pattern() || '$') AS key_shape FROM forgeries ORDER BY label;
SET ROLE regress_verifier;
SELECT valid, reason, owner FROM api_key_verify(:'k');
RESET ROLE;
SELECT sum(value) AS work_before FROM stats()
 WHERE counter IN ('memo_hits', 'memo_misses', 'argon2_runs', 'argon2_throttled') \gset
SET ROLE regress_verifier;
SELECT f.label, v.valid, v.reason,
       num_nulls(v.key_id, v.owner, v.key_type, v.environment, v.scopes) AS null_identity
  FROM forgeries f, LATERAL api_key_verify(f.input) v ORDER BY f.label;
RESET ROLE;
-- ... refused before the memo and argon2: neither was asked
SELECT sum(value) - :work_before AS memo_and_argon2_delta FROM stats()
 WHERE counter IN ('memo_hits', 'memo_misses', 'argon2_runs', 'argon2_throttled');
SET ROLE regress_verifier;
-- ... and a mangled checksum is only malformed (refused before the signature)
SELECT valid, reason FROM api_key_verify(left(:'k', -1) || CASE right(:'k', 1) WHEN '0' THEN '1' ELSE '0' END);
-- ... and none of them cost the real key anything
SELECT valid, reason FROM api_key_verify(:'k');
RESET ROLE;
-- each forgery counted once as forged and once as invalid_secret
SELECT (SELECT value FROM stats() WHERE counter = 'forged_signatures') - :forged_before AS forged_delta,
       (SELECT value FROM stats() WHERE counter = 'verify_invalid_secret') - :invalid_before AS invalid_secret_delta;

-- a key whose row names another signing key than its signature (made here with the
-- triggers off; the guard forbids it) is refused the same way
SAVEPOINT other_signing_key;
SET session_replication_role = replica;
UPDATE keys SET signing_key = CASE :'k_sk' WHEN 'zzzz' THEN 'yyyy' ELSE 'zzzz' END WHERE id = :'k_id';
RESET session_replication_role;
SELECT valid, reason FROM api_key_verify(:'k');
ROLLBACK TO SAVEPOINT other_signing_key;
SELECT valid, reason FROM api_key_verify(:'k');

-- rotate_signing_key(): admins only. Plain roles and verifiers are refused
SET ROLE regress_plain;
SELECT regress.expect_error('SELECT * FROM api_keys.rotate_signing_key()');
RESET ROLE;
SET ROLE regress_verifier;
SELECT regress.expect_error('SELECT * FROM api_keys.rotate_signing_key()');
RESET ROLE;
-- ... an admin gets one row: the new id and its creation time
SET ROLE regress_admin;
SET api_keys.actor = 'ops-bot';
CREATE TEMP TABLE rotated AS SELECT * FROM rotate_signing_key();
RESET api_keys.actor;
SELECT count(*) AS rows, bool_and(id ~ '^[0-9A-Za-z]{4}$') AS id_shape,
       bool_and(id <> :'first_sk') AS new_id, bool_and(created_at BETWEEN now() AND clock_timestamp()) AS created_now
  FROM rotated;
SELECT id AS new_sk FROM rotated \gset
-- ... audited as signing_key_rotated, with the role and the application actor
SELECT action, actor, app_actor, key_id, prefix, details->>'signing_key' = :'new_sk' AS names_new_id,
       details - 'signing_key' AS other_details
  FROM audit_log WHERE action = 'signing_key_rotated';
-- ... the next key is signed with the new signing key; the admin reads keys.signing_key
SELECT id AS k2_id, key AS k2, prefix AS k2_prefix
  FROM api_key_issue('signed later', 'service', 'production') \gset
SELECT substr(:'k2', length(:'k2_prefix') + 2 + 43, 4) = :'new_sk' AS id_in_key_is_new,
       length(:'k2') AS key_length
  FROM keys WHERE id = :'k2_id';
SELECT id = :'k_id' AS first_key, signing_key = :'first_sk' AS signed_by_first,
       signing_key = :'new_sk' AS signed_by_new
  FROM keys WHERE id IN (:'k_id', :'k2_id') ORDER BY created_at, name;
-- ... but never the signing keys: not read, written or made by hand
SELECT label, regress.expect_error(stmt) FROM (VALUES
    ('select', 'SELECT * FROM api_keys.signing_keys'),
    ('select secret', 'SELECT secret FROM api_keys.signing_keys'),
    ('insert', $$INSERT INTO api_keys.signing_keys (id, secret) VALUES ('evil', decode(repeat('00', 32), 'hex'))$$),
    ('delete', 'DELETE FROM api_keys.signing_keys'),
    ('update', $$UPDATE api_keys.signing_keys SET secret = decode(repeat('00', 32), 'hex')$$),
    ('create helper', 'SELECT * FROM api_keys._create_signing_key()'),
    ('secret helper', 'SELECT api_keys._new_signing_secret()'),
    ('impl', 'SELECT * FROM api_keys._impl_rotate_signing_key()')
  ) AS t(label, stmt);
-- ... only their public ids and dates (to retire one)
SELECT count(*) AS admin_sees_ids, bool_and(id ~ '^[0-9A-Za-z]{4}$') AS ids_shaped
  FROM (SELECT id, created_at FROM api_keys.signing_keys) s;
RESET ROLE;
SET ROLE regress_plain;
SELECT regress.expect_error('SELECT * FROM api_keys.signing_keys');
SELECT regress.expect_error('SELECT signing_key FROM api_keys.keys');
RESET ROLE;
-- ... the key issued before the rotation keeps verifying, beside the new one
SET ROLE regress_verifier;
SELECT valid, reason, key_id = :'k_id' AS first_key FROM api_key_verify(:'k');
SELECT valid, reason, key_id = :'k2_id' AS second_key FROM api_key_verify(:'k2');
RESET ROLE;
-- ... and the new signing key is now the newest
SELECT id = :'new_sk' AS newest_is_new, count(*) OVER () AS signing_keys
  FROM signing_keys ORDER BY created_at DESC, id DESC LIMIT 1;

-- keys.signing_key never changes: not even a superuser UPDATE (the guard, 55000) ...
SELECT label, regress.expect_error(format(stmt, :'k_id', :'new_sk')) FROM (VALUES
    ('to another signing key', 'UPDATE api_keys.keys SET signing_key = %2$L WHERE id = %1$L'),
    ('to NULL (the unsigned path)', 'UPDATE api_keys.keys SET signing_key = NULL WHERE id = %1$L')
  ) AS t(label, stmt);
-- ... and an admin lacks the column privilege (42501)
SET ROLE regress_admin;
SELECT regress.expect_error(format('UPDATE api_keys.keys SET signing_key = %L WHERE id = %L', :'new_sk', :'k_id'));
RESET ROLE;
SELECT signing_key = :'first_sk' AS unchanged FROM keys WHERE id = :'k_id';

-- the table's CHECKs: an id of 4 base62 characters, a secret of 32 bytes (23514)
SELECT label, regress.expect_error(format(
           'INSERT INTO api_keys.signing_keys (id, secret) VALUES (%L, decode(repeat(''ab'', %s), ''hex''))',
           id, bytes))
  FROM (VALUES (1, 'id of 3', 'abc', 32),
               (2, 'id of 5', 'abcde', 32),
               (3, 'id with a dash', 'ab-c', 32),
               (4, 'id with a non-ASCII letter', 'abçd', 32),
               (5, 'empty id', '', 32),
               (6, '31-byte secret', 'AbC1', 31),
               (7, '33-byte secret', 'AbC1', 33),
               (8, 'empty secret', 'AbC1', 0)) AS t(n, label, id, bytes)
 ORDER BY n;

-- no signing key at all: issuing refuses (55000, the hint names rotate_signing_key),
-- verifying is invalid_secret; rotate_signing_key() makes issuing work again
SAVEPOINT no_signing_keys;
DELETE FROM signing_keys;
SET ROLE regress_plain;
SELECT regress.expect_error($$SELECT api_keys.api_key_issue('unsignable', 'service', 'production')$$);
SELECT regress.expect_error($$SELECT api_keys.api_key_rotate($$ || quote_literal(:'k_id') || $$)$$);
RESET ROLE;
SET ROLE regress_verifier;
SELECT valid, reason FROM api_key_verify(:'k');
RESET ROLE;
SET ROLE regress_admin;
SELECT count(*) AS rotated FROM rotate_signing_key();
SELECT length(key) AS issued_again FROM api_key_issue('signable again', 'service', 'production');
RESET ROLE;
ROLLBACK TO SAVEPOINT no_signing_keys;

-- deleting a signing key (a superuser retiring it) refuses the keys it signed at once,
-- in the same session: the table's trigger makes the backend read it again at the
-- next command. Keys of other signing keys still verify. Rolling the deletion back
-- brings the keys back.
SAVEPOINT retire;
DELETE FROM signing_keys WHERE id = :'first_sk';
SET ROLE regress_verifier;
SELECT valid, reason FROM api_key_verify(:'k');
SELECT valid, reason FROM api_key_verify(:'k2');
RESET ROLE;
ROLLBACK TO SAVEPOINT retire;
SET ROLE regress_verifier;
SELECT valid, reason FROM api_key_verify(:'k');
RESET ROLE;

rollback;
