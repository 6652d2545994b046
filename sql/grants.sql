-- Privileges. Functions default to EXECUTE for PUBLIC: take that away, then grant back
-- exactly what each audience needs, and say why.
REVOKE ALL ON ALL TABLES IN SCHEMA api_keys FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA api_keys FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA api_keys FROM PUBLIC;

-- Everyone may name the schema's types and call what is granted below.
GRANT USAGE ON SCHEMA api_keys TO PUBLIC;

-- The views filter rows by _caller(); their callers need these two, and the ones that
-- compute key_list's columns (from the row they are given, nothing else).
GRANT EXECUTE ON FUNCTION api_keys._caller(), api_keys._caller_is_admin(),
                          api_keys._effective_status(api_keys.key_status, timestamptz),
                          api_keys._credit_period(timestamptz, text, timestamptz),
                          api_keys._remaining_uses(api_keys.keys, timestamptz),
                          api_keys._next_refill(timestamptz, text, timestamptz) TO PUBLIC;

-- Self-service: any role issues, lists and manages keys it owns (the functions check
-- ownership; admins see all). Reading the views shows only the caller's own keys.
GRANT EXECUTE ON FUNCTION
    api_keys.api_key_issue(text, api_keys.key_type, api_keys.environment, text[], text, timestamptz, cidr[], text, integer, integer, jsonb, bigint, bigint, text),
    api_keys.api_key_suspend(uuid, text),
    api_keys.api_key_reactivate(uuid),
    api_keys.api_key_revoke(uuid, text),
    api_keys.api_key_set_status(uuid, api_keys.key_status, text),
    api_keys.api_key_delete(uuid),
    api_keys.api_key_rotate(uuid, interval, bigint),
    api_keys.api_key_update(uuid, text, text, text[], cidr[], timestamptz, integer, integer, jsonb, bigint, bigint, text),
    api_keys.api_key_set_credits(uuid, bigint, bigint, text),
    api_keys.api_key_list(api_keys.key_status, api_keys.environment, text, text, text, integer, integer)
TO PUBLIC;
-- The same, naming the key by prefix (sql/key_ref.sql).
GRANT EXECUTE ON FUNCTION
    api_keys.api_key_suspend(text, text),
    api_keys.api_key_reactivate(text),
    api_keys.api_key_revoke(text, text),
    api_keys.api_key_set_status(text, api_keys.key_status, text),
    api_keys.api_key_delete(text),
    api_keys.api_key_rotate(text, interval, bigint),
    api_keys.api_key_update(text, text, text, text[], cidr[], timestamptz, integer, integer, jsonb, bigint, bigint, text),
    api_keys.api_key_set_credits(text, bigint, bigint, text)
TO PUBLIC;
GRANT SELECT ON api_keys.key_list, api_keys.expiring_soon,
                api_keys.usage_by_key, api_keys.usage_by_owner, api_keys.key_audit TO PUBLIC;

-- The scanner regex reveals nothing but the brand.
GRANT EXECUTE ON FUNCTION api_keys.key_pattern() TO PUBLIC;

-- Verifiers check keys presented to them; they cannot list or change any. authenticate
-- and login also set the transaction's request context (PostgREST's anonymous role is
-- made a member of api_keys_verifier, see examples/postgrest).
GRANT EXECUTE ON FUNCTION api_keys.api_key_verify(text, inet, text, integer),
                          api_keys.authenticate(),
                          api_keys.login(text, inet) TO api_keys_verifier;

-- The request context reveals only what the caller's own transaction authenticated,
-- and RLS policies of any table owner call these.
GRANT EXECUTE ON FUNCTION api_keys.has_scope(text), api_keys.require_scope(text),
                          api_keys.current_key_id(), api_keys.current_owner() TO PUBLIC;

-- Admins: the scope catalog, the audit log, pruning, the server's counters, and direct
-- edits of keys (guarded by the keys_guard trigger and audited). Never the hash or the
-- signing secrets: column grants leave them out.
GRANT EXECUTE ON FUNCTION api_keys.api_key_register_scope(text, text, text),
                          api_keys.stats(),
                          api_keys.audit_prune(interval),
                          api_keys.expire_due(),
                          api_keys.rotate_signing_key(),
                          -- A scanner's findings may be any owner's keys.
                          api_keys.api_key_report_leaked(text[], text),
                          -- Limits on what every key of an owner may do together.
                          api_keys.api_key_set_owner_limits(text, integer, integer) TO api_keys_admin;
GRANT SELECT ON api_keys.audit_log, api_keys.scope_catalog, api_keys.usage, api_keys.owner_limits,
                api_keys.credit_use TO api_keys_admin;
-- The audit log's sequence, which pg_dump reads with the log (README, Backups).
GRANT SELECT ON api_keys.audit_log_id_seq TO api_keys_admin;
-- Signing keys' public ids (they are in every key) and dates, to retire one; never the
-- secrets.
GRANT SELECT (id, created_at) ON api_keys.signing_keys TO api_keys_admin;
-- The credits' uses spent and the copies of the owner's limits are read-only: the
-- workers and the copy triggers write them.
GRANT SELECT (id, prefix, name, description, key_type, environment, owner, status,
              status_reason, status_changed_at, scopes, allowed_cidrs, expires_at,
              created_at, created_by, last_used_at, last_used_ip, rotated_from,
              rate_limit_per_minute, rate_limit_per_hour, metadata, signing_key,
              uses_granted, uses_from, refill_amount, refill_interval, uses_period, uses_spent,
              owner_rate_limit_per_minute, owner_rate_limit_per_hour),
      UPDATE (name, description, owner, status, status_reason, scopes, allowed_cidrs,
              expires_at, rate_limit_per_minute, rate_limit_per_hour, metadata,
              uses_granted, refill_amount, refill_interval)
   ON api_keys.keys TO api_keys_admin;

-- A standby's worker sends its usage to the primary as a member of api_keys_standby
-- (api_keys.primary_conninfo): it writes usage totals and last use, nothing else.
GRANT EXECUTE ON FUNCTION api_keys._merge_usage(bigint, uuid, uuid[], timestamptz[], bigint[], bigint[],
                                                bigint[], uuid[], timestamptz[], inet[], uuid[],
                                                timestamptz[], bigint[], bigint[]) TO api_keys_standby;

-- pg_dump keeps the data of these tables (and the audit id sequence).
SELECT pg_catalog.pg_extension_config_dump('api_keys.keys', '');
SELECT pg_catalog.pg_extension_config_dump('api_keys.scope_catalog', '');
SELECT pg_catalog.pg_extension_config_dump('api_keys.audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('api_keys.audit_log_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('api_keys.usage', '');
SELECT pg_catalog.pg_extension_config_dump('api_keys.owner_limits', '');
SELECT pg_catalog.pg_extension_config_dump('api_keys.credit_use', '');
-- Without them no key issued here verifies (a restore keeps them beside the signing
-- key its own CREATE EXTENSION makes).
SELECT pg_catalog.pg_extension_config_dump('api_keys.signing_keys', '');
