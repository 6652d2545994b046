\set ON_ERROR_ROLLBACK on
\set SHOW_CONTEXT never
-- Keys named by prefix: every lifecycle function that takes a key's id takes its
-- prefix too; an id as text still works; anything else is refused without echoing it.
begin;
SET search_path = api_keys, public;
SET api_keys.argon2_memory_kib = 64;
SET api_keys.argon2_iterations = 1;

SELECT id AS k, prefix AS p, key AS whole FROM api_key_issue('by prefix', 'service', 'production') \gset

-- each function by prefix, positional and named
SELECT status, status_reason FROM api_key_suspend(:'p', 'by prefix');
SELECT status FROM api_key_reactivate(key_id => :'p');
SELECT name, rate_limit_per_minute FROM api_key_update(:'p', name => 'renamed', rate_limit_per_minute => 7);
SELECT status FROM api_key_set_status(:'p', 'suspended');
SELECT status FROM api_key_set_status(key_id => :'p', status => 'active');
-- the id as quoted text (it resolves to the text overload), as text in upper case,
-- and as a uuid value
SELECT status FROM api_key_suspend(:'k');
SELECT status FROM api_key_reactivate(upper(:'k'));
SELECT status FROM api_key_suspend(:'k'::uuid);
SELECT status FROM api_key_reactivate(:'k'::uuid);
-- rotation by prefix: a new key from the old one, which keeps working for the grace
SELECT id AS rotated FROM api_key_rotate(:'p', interval '1 hour') \gset
SELECT rotated_from = :'k' AS rotated_from_old, name, prefix <> :'p' AS new_prefix
  FROM key_list WHERE id = :'rotated';
SELECT status, expires_at > now() AS in_grace FROM key_list WHERE id = :'k';
SELECT status, status_reason FROM api_key_revoke(:'p', 'by prefix');
SELECT id = :'k' AS same_key FROM api_key_delete(:'p');
SELECT action, old_status, new_status FROM audit_log WHERE key_id = :'k' ORDER BY id;

-- not found: P0002, as for an unknown id
SELECT regress.expect_error(format('SELECT api_keys.api_key_suspend(%L)', :'p'));
SELECT regress.expect_error($$SELECT api_keys.api_key_revoke('ak_live_AAAAAAAAAAAA', 'x')$$);
SELECT regress.expect_error($$SELECT api_keys.api_key_suspend('00000000-0000-0000-0000-000000000000')$$);
-- a whole key (secret included), or most of one, is named by its prefix, with a
-- WARNING (not an error, which would log the statement) that never repeats the secret
SELECT id AS k2, prefix AS p2, key AS whole2 FROM api_key_issue('whole', 'service', 'staging') \gset
SELECT regress.pin_prefix(:'k2', 'ak_stage_WholeKey0001');
SELECT 'ak_stage_WholeKey0001' || substr(:'whole2', length(:'p2') + 1) AS whole2,
       'ak_stage_WholeKey0001' AS p2 \gset
SELECT status FROM api_key_suspend(:'whole2');
SELECT status FROM api_key_reactivate(left(:'whole2', 40));
-- prefixes match exactly: no partial prefix, no other case
SELECT regress.expect_error(format('SELECT api_keys.api_key_suspend(%L)', left(:'p2', 15)));
SELECT regress.expect_error(format('SELECT api_keys.api_key_suspend(%L)', upper(:'p2')));
SELECT regress.expect_error(format('SELECT api_keys.api_key_suspend(%L)', :'p2' || ' '));
-- anything else: 22023 without the input; NULL as for an id
SELECT regress.expect_error($$SELECT api_keys.api_key_suspend('not a key')$$);
SELECT regress.expect_error($$SELECT api_keys.api_key_suspend(NULL)$$);
SELECT regress.expect_error($$SELECT api_keys.api_key_update(repeat('x', 10000000))$$);
SELECT regress.expect_error($$SELECT api_keys.api_key_rotate(E'ak_live_\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9')$$);

-- another owner's key by prefix is not found, exactly like a prefix nobody has; the
-- owner's own key is found
CREATE ROLE regress_keyref_alice;
CREATE ROLE regress_keyref_bob;
GRANT regress_keyref_alice TO CURRENT_USER;
SET ROLE regress_keyref_alice;
SELECT prefix AS alice_p FROM api_keys.api_key_issue('alice''s', 'user', 'development') \gset
SELECT status FROM api_keys.api_key_suspend(:'alice_p');
SET ROLE regress_keyref_bob;
SELECT regress.expect_error(format('SELECT api_keys.api_key_reactivate(%L)', :'alice_p'));
SELECT regress.expect_error(format('SELECT api_keys.api_key_delete(%L)', :'p2'));
RESET ROLE;
SELECT status FROM key_list WHERE prefix = :'alice_p';
rollback;
