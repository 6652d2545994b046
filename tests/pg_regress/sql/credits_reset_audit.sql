\set ON_ERROR_ROLLBACK on
\set SHOW_CONTEXT never
-- Red-team finding (issue 18): resetting a key's credits to the same number is a change
-- ("Each change is audited as updated") even when the uses spent are not written yet:
-- it starts a new period and gives back every use spent in the old one.
begin;
SET search_path = api_keys, public;
SET api_keys.argon2_memory_kib = 64;
SET api_keys.argon2_iterations = 1;
CREATE ROLE regress_reset_owner;
CREATE ROLE regress_reset_verifier IN ROLE api_keys_verifier;
SET ROLE regress_reset_owner;
CREATE TEMP TABLE k AS
SELECT i.id, i.key FROM api_key_issue('reset audit', 'service', 'production', remaining_uses => 5) i;
RESET ROLE;
GRANT SELECT ON k TO regress_reset_verifier;
-- all five uses spent (in shared memory; the key row is not committed, so no worker
-- writes them)
SET ROLE regress_reset_verifier;
SELECT valid, reason, remaining_uses FROM k, api_key_verify(k.key, cost => 5);
SELECT valid, reason, remaining_uses FROM k, api_key_verify(k.key);
-- the owner grants five uses again: a change, audited
SET ROLE regress_reset_owner;
SELECT remaining_uses FROM k, api_key_set_credits(k.id, 5);
RESET ROLE;
SET ROLE regress_reset_verifier;
SELECT valid, reason, remaining_uses FROM k, api_key_verify(k.key, cost => 5);
RESET ROLE;
SELECT action, details ? 'remaining_uses' AS credits_change
  FROM audit_log a, k WHERE a.key_id = k.id ORDER BY a.id;
rollback;
