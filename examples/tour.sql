-- A guided tour: issue -> verify -> suspend -> reactivate -> revoke -> list -> audit.
\set ON_ERROR_STOP on
\pset footer off
\set QUIET on
SET search_path = api_keys, public;
\set QUIET off
\echo
\echo '1. Issue a production service key that may read runs. The full key is shown once:'
SELECT id AS key_id, key, prefix
  FROM api_key_issue('tour: CI pipeline', 'service', 'production',
                     scopes => ARRAY['runs:read'], expires_at => now() + interval '90 days') \gset
\echo '   key:    ' :key
\echo '   prefix: ' :prefix '  (stored in clear, shown in listings; only an argon2id hash of the secret is stored)'
\echo '   The secret ends in a MAC made with a server signing key, so a forged secret for this'
\echo '   prefix is refused for the price of one HMAC, before any table or hash (README, Signed keys).'
\echo
\echo '2. Verify it, asking for the scope runs:read:'
SELECT valid, reason, owner, key_type, environment, scopes FROM api_key_verify(:'key', '127.0.0.1', 'runs:read');
\echo '   ... and for runs:write, which it lacks:'
SELECT valid, reason FROM api_key_verify(:'key', '127.0.0.1', 'runs:write');
\echo '   A mistyped key is rejected by its checksum, before any table or hash is touched:'
SELECT valid, reason FROM api_key_verify(overlay(:'key' placing 'x' from 30 for 1));
\echo
\echo '3. Suspend it, naming it by its prefix (or its id); verification fails at once:'
SELECT prefix, status, status_reason FROM api_key_suspend(:'prefix', 'tour: investigating');
SELECT valid, reason FROM api_key_verify(:'key');
\echo
\echo '4. Reactivate it:'
SELECT prefix, status FROM api_key_reactivate(:'key_id');
SELECT valid, reason FROM api_key_verify(:'key');
\echo
\echo '5. Revoke it (a reason is required; revocation is final):'
SELECT prefix, status, status_reason FROM api_key_revoke(:'key_id', 'tour: done');
SELECT valid, reason FROM api_key_verify(:'key');
\echo
\echo '6. List keys (newest first):'
SELECT prefix, name, environment, status, expires_at::date AS expires FROM api_key_list(search => 'tour') LIMIT 5;
\echo
\echo '7. The audit log of this key:'
SELECT action, actor, old_status, new_status, reason FROM audit_log WHERE key_id = :'key_id' ORDER BY id;
