-- api_keys 0.1.0 -> 0.2.0
\echo Use "ALTER EXTENSION api_keys UPDATE TO '0.2.0'" to load this file. \quit

-- Verification reads the key row through the prefix index and runs no SQL: SECURITY
-- INVOKER, gated by EXECUTE alone, and a new entry point in the library. CREATE OR
-- REPLACE also drops the old SECURITY DEFINER and its SET search_path.
CREATE OR REPLACE FUNCTION api_keys.api_key_verify(
    key text,
    client_ip inet DEFAULT NULL,
    required_scope text DEFAULT NULL
) RETURNS TABLE (
    valid boolean, reason text, key_id uuid, owner text,
    key_type api_keys.key_type, environment api_keys.environment,
    scopes text[], expires_at timestamptz
)
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'api_key_verify';
COMMENT ON FUNCTION api_keys.api_key_verify(text, inet, text) IS
    'One row for any input: valid, reason and, when valid, the key''s identity.';

-- Usage counted in shared memory and written by the background worker.
-- Hourly verification counts per key, written by the background worker from shared
-- memory (never by the verifying transaction). No foreign key: a key deleted while its
-- counts are in flight must not fail the flush; deleting a key removes its rows.
CREATE TABLE api_keys.usage (
    key_id   uuid NOT NULL,
    hour     timestamptz NOT NULL,
    verified bigint NOT NULL DEFAULT 0 CHECK (verified >= 0),
    rejected bigint NOT NULL DEFAULT 0 CHECK (rejected >= 0),
    PRIMARY KEY (key_id, hour)
);
COMMENT ON TABLE api_keys.usage IS
    'Verifications per key per hour: verified (valid) and rejected (the key was found but the call failed a check). Kept current within api_keys.flush_interval.';
CREATE INDEX usage_hour_idx ON api_keys.usage (hour);

CREATE VIEW api_keys.usage_by_key WITH (security_barrier) AS
SELECT u.key_id, l.prefix, l.name, l.owner, u.hour, u.verified, u.rejected
  FROM api_keys.usage u
  JOIN api_keys.key_list l ON l.id OPERATOR(pg_catalog.=) u.key_id;
COMMENT ON VIEW api_keys.usage_by_key IS
    'Hourly usage of the keys the caller may see.';

CREATE VIEW api_keys.usage_by_owner WITH (security_barrier) AS
SELECT l.owner, u.hour,
       pg_catalog.count(DISTINCT u.key_id) AS keys,
       pg_catalog.sum(u.verified)::bigint AS verified,
       pg_catalog.sum(u.rejected)::bigint AS rejected
  FROM api_keys.usage u
  JOIN api_keys.key_list l ON l.id OPERATOR(pg_catalog.=) u.key_id
 GROUP BY l.owner, u.hour;
COMMENT ON VIEW api_keys.usage_by_owner IS
    'Hourly usage summed over each owner''s keys (org-wide), for the owners the caller may see.';

-- Deleting a key also deletes its usage rows.
CREATE OR REPLACE FUNCTION api_keys._keys_audit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- Usage bookkeeping and status columns are not edits; the hash is never logged.
    quiet CONSTANT text[] := ARRAY['status', 'status_changed_at',
                                   'last_used_at', 'last_used_ip', 'secret_hash'];
    changes jsonb;
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM api_keys.usage WHERE key_id OPERATOR(pg_catalog.=) OLD.id;
        PERFORM api_keys._audit('deleted', OLD, api_keys._effective_status(OLD.status, OLD.expires_at),
                                NULL, NULL, jsonb_build_object('name', OLD.name, 'owner', OLD.owner));
        RETURN OLD;
    END IF;
    SELECT jsonb_object_agg(n.key, jsonb_build_object('old', o.value, 'new', n.value))
      INTO changes
      FROM jsonb_each(to_jsonb(NEW) - quiet) n
      JOIN jsonb_each(to_jsonb(OLD) - quiet) o USING (key)
     WHERE n.value IS DISTINCT FROM o.value;
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        -- The reason of a status change has its own column.
        changes := nullif(changes - 'status_reason', '{}'::jsonb);
        PERFORM api_keys._audit(
            CASE NEW.status WHEN 'active' THEN 'reactivated' ELSE NEW.status::text END,
            NEW, OLD.status, NEW.status, NEW.status_reason, changes);
    ELSIF changes IS NOT NULL THEN
        PERFORM api_keys._audit('updated', NEW, OLD.status, NEW.status, NULL, changes);
    END IF;
    RETURN NULL;
END
$$;

-- Records expiries that have already happened (verify treats such keys as expired at
-- once regardless). Each key's status change goes through the guard and is audited
-- as 'expired' by the audit trigger. The background worker runs it every flush.
CREATE FUNCTION api_keys.expire_due() RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    expired integer;
BEGIN
    UPDATE api_keys.keys
       SET status = 'expired',
           status_reason = coalesce(status_reason, 'expires_at passed')
     WHERE status IN ('active', 'suspended')
       AND expires_at <= statement_timestamp();
    GET DIAGNOSTICS expired = ROW_COUNT;
    RETURN expired;
END $$;
COMMENT ON FUNCTION api_keys.expire_due() IS
    'Marks keys past expires_at as expired (audited); returns how many.';

REVOKE ALL ON api_keys.usage, api_keys.usage_by_key, api_keys.usage_by_owner FROM PUBLIC;
REVOKE ALL ON FUNCTION api_keys.expire_due() FROM PUBLIC;
GRANT SELECT ON api_keys.usage_by_key, api_keys.usage_by_owner TO PUBLIC;
GRANT EXECUTE ON FUNCTION api_keys.expire_due() TO api_keys_admin;
GRANT SELECT ON api_keys.usage TO api_keys_admin;
SELECT pg_catalog.pg_extension_config_dump('api_keys.usage', '');
