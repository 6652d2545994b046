-- api_keys: types, tables, views and the triggers that guard them.
-- Objects are schema-qualified and operators pinned (OPERATOR(pg_catalog.=)) so no
-- caller's search_path can redirect them.

-- Roles are cluster-wide: create them once and keep them across DROP EXTENSION.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'api_keys_admin') THEN
        CREATE ROLE api_keys_admin NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'api_keys_verifier') THEN
        CREATE ROLE api_keys_verifier NOLOGIN;
    END IF;
END
$roles$;

CREATE TYPE api_keys.key_type AS ENUM ('service', 'user');
CREATE TYPE api_keys.environment AS ENUM ('production', 'staging', 'development');
CREATE TYPE api_keys.key_status AS ENUM ('active', 'suspended', 'revoked', 'expired');

CREATE TABLE api_keys.keys (
    id                    uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    prefix                text NOT NULL UNIQUE,
    secret_hash           text NOT NULL,
    name                  text NOT NULL CHECK (pg_catalog.btrim(name) <> ''),
    description           text,
    key_type              api_keys.key_type NOT NULL,
    environment           api_keys.environment NOT NULL,
    owner                 text NOT NULL CHECK (owner <> ''),
    status                api_keys.key_status NOT NULL DEFAULT 'active',
    status_reason         text,
    status_changed_at     timestamptz,
    scopes                text[] NOT NULL DEFAULT ARRAY['*']
                          CHECK (pg_catalog.array_position(scopes, NULL) IS NULL),
    allowed_cidrs         cidr[] NOT NULL DEFAULT '{}'
                          CHECK (pg_catalog.array_position(allowed_cidrs, NULL) IS NULL),
    expires_at            timestamptz,
    created_at            timestamptz NOT NULL DEFAULT pg_catalog.now(),
    created_by            text NOT NULL,
    last_used_at          timestamptz,
    last_used_ip          inet,
    -- No foreign key: a rotated-from key may be deleted; the audit log keeps its story.
    rotated_from          uuid,
    rate_limit_per_minute integer CHECK (rate_limit_per_minute > 0),
    rate_limit_per_hour   integer CHECK (rate_limit_per_hour > 0),
    metadata              jsonb NOT NULL DEFAULT '{}' CHECK (pg_catalog.jsonb_typeof(metadata) = 'object')
);
COMMENT ON TABLE api_keys.keys IS
    'API keys. secret_hash is an argon2id PHC string; only superusers can read it.';
CREATE INDEX keys_owner_idx ON api_keys.keys (owner);
CREATE INDEX keys_expires_at_idx ON api_keys.keys (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE api_keys.scope_catalog (
    resource    text NOT NULL,
    action      text NOT NULL,
    description text,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (resource, action)
);
COMMENT ON TABLE api_keys.scope_catalog IS
    'When it has rows, issued scopes must match one of them.';

CREATE TABLE api_keys.audit_log (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    key_id     uuid,
    prefix     text,
    action     text NOT NULL CHECK (action IN ('issued', 'updated', 'suspended', 'reactivated',
                                              'revoked', 'expired', 'rotated', 'deleted')),
    actor      text NOT NULL,
    app_actor  text,
    old_status api_keys.key_status,
    new_status api_keys.key_status,
    reason     text,
    details    jsonb NOT NULL DEFAULT '{}'
);
COMMENT ON TABLE api_keys.audit_log IS
    'Append-only history of every key change; api_keys.audit_prune() is the only way out.';
COMMENT ON COLUMN api_keys.audit_log.actor IS 'The role that made the change.';
COMMENT ON COLUMN api_keys.audit_log.app_actor IS 'Setting api_keys.actor at the time, when an application set it.';
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

CREATE INDEX audit_log_key_idx ON api_keys.audit_log (key_id, at);
CREATE INDEX audit_log_at_idx ON api_keys.audit_log (at);

-- The role a call acts for: current_user at its call site, also inside the SECURITY
-- DEFINER implementations of the management functions, which note it on entry
-- (src/caller.rs). So inside anyone's SECURITY DEFINER function it is that function's
-- owner, as PostgreSQL has it; under PostgREST (SET ROLE) the request's role.
-- _caller_is_admin pins search_path: the views call it with the caller's search_path in
-- force, and a caller could otherwise shadow a type or operator it uses (pg_temp comes
-- first for types unless placed last).
CREATE FUNCTION api_keys._caller() RETURNS text
LANGUAGE c STABLE PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'api_keys_caller';

CREATE FUNCTION api_keys._caller_is_admin() RETURNS boolean
LANGUAGE sql STABLE PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_has_role(api_keys._caller()::name, 'api_keys_admin', 'MEMBER')
$$;

-- Status as users see it: past expires_at, an active or suspended key is expired.
-- Statement time, not transaction time: a long transaction sees expiry as it happens.
CREATE FUNCTION api_keys._effective_status(status api_keys.key_status, expires_at timestamptz)
RETURNS api_keys.key_status
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE
               WHEN status OPERATOR(pg_catalog.=) ANY (ARRAY['active', 'suspended']::api_keys.key_status[])
                    AND expires_at OPERATOR(pg_catalog.<=) pg_catalog.statement_timestamp()
               THEN 'expired'::api_keys.key_status
               ELSE status
           END
$$;

CREATE VIEW api_keys.key_list WITH (security_barrier) AS
SELECT k.id, k.prefix, k.name, k.description, k.key_type, k.environment, k.owner,
       api_keys._effective_status(k.status, k.expires_at) AS status,
       k.status_reason, k.scopes, k.allowed_cidrs, k.expires_at, k.created_at, k.created_by,
       k.last_used_at, k.last_used_ip, k.rotated_from, k.rate_limit_per_minute,
       k.rate_limit_per_hour, k.metadata
  FROM api_keys.keys k
 WHERE k.owner OPERATOR(pg_catalog.=) (SELECT api_keys._caller())
    OR (SELECT api_keys._caller_is_admin());
COMMENT ON VIEW api_keys.key_list IS
    'Keys the caller may see (its own; all for api_keys_admin), with effective status. Never the hash.';

CREATE VIEW api_keys.expiring_soon WITH (security_barrier) AS
SELECT l.*
  FROM api_keys.key_list l
 WHERE l.status OPERATOR(pg_catalog.=) 'active'::api_keys.key_status
   AND l.expires_at OPERATOR(pg_catalog.<=) (pg_catalog.statement_timestamp() OPERATOR(pg_catalog.+)
       -- current_setting, not pg_settings: it also sees a value SET before the library
       -- was loaded in this session.
       coalesce(NULLIF(pg_catalog.current_setting('api_keys.expiry_warning', true), '')::pg_catalog.interval,
                '7 days'::pg_catalog.interval));
COMMENT ON VIEW api_keys.expiring_soon IS
    'Active keys expiring within setting api_keys.expiry_warning (default 7 days).';

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

-- The lifecycle rules, in one place. Called by the lifecycle functions (for a clear
-- message before any write) and by the guard trigger (for direct UPDATEs by admins).
CREATE FUNCTION api_keys._check_transition(k api_keys.keys, target api_keys.key_status)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    effective api_keys.key_status := api_keys._effective_status(k.status, k.expires_at);
BEGIN
    IF target IS NULL THEN
        RAISE EXCEPTION 'status must not be NULL' USING ERRCODE = 'invalid_parameter_value';
    ELSIF k.status = 'revoked' THEN
        RAISE EXCEPTION 'key % is revoked; a revoked key cannot become %', k.prefix, target
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Revocation is final. Issue a new key instead.';
    ELSIF target = 'revoked' THEN
        RETURN;
    ELSIF effective = 'expired' THEN
        IF target = 'expired' AND k.status <> 'expired' THEN
            RETURN;  -- recording an expiry that has already happened
        END IF;
        RAISE EXCEPTION 'key % has expired; an expired key cannot become %', k.prefix, target
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Expiry is final. Issue a new key instead.';
    ELSIF target = k.status THEN
        RAISE EXCEPTION 'key % is already %', k.prefix, target
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    -- Left: active <-> suspended, and active/suspended -> expired (ends the key now).
END
$$;

-- Revoked and expired keys are frozen: one message for the functions and the guard.
CREATE FUNCTION api_keys._check_editable(k api_keys.keys) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    effective api_keys.key_status := api_keys._effective_status(k.status, k.expires_at);
BEGIN
    IF effective IN ('revoked', 'expired') THEN
        RAISE EXCEPTION 'key % is %; it can no longer be changed', k.prefix, effective
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Issue a new key instead.';
    END IF;
END
$$;

CREATE FUNCTION api_keys._audit(
    action text, k api_keys.keys, old_status api_keys.key_status,
    new_status api_keys.key_status, reason text, details jsonb
) RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO api_keys.audit_log (key_id, prefix, action, actor, app_actor,
                                    old_status, new_status, reason, details)
    VALUES (k.id, k.prefix, action, api_keys._caller(),
            nullif(current_setting('api_keys.actor', true), ''),
            old_status, new_status, reason, coalesce(details, '{}'))
$$;

-- BEFORE UPDATE: immutable columns, lifecycle rules, scope grammar, terminal keys.
CREATE FUNCTION api_keys._keys_guard() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF (NEW.id, NEW.prefix, NEW.secret_hash, NEW.created_at, NEW.created_by,
        NEW.key_type, NEW.environment, NEW.rotated_from)
       IS DISTINCT FROM
       (OLD.id, OLD.prefix, OLD.secret_hash, OLD.created_at, OLD.created_by,
        OLD.key_type, OLD.environment, OLD.rotated_from) THEN
        RAISE EXCEPTION 'id, prefix, secret_hash, created_at, created_by, key_type, environment and rotated_from of key % cannot be changed', OLD.prefix
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Rotate the key (api_key_rotate) for a new secret, or issue a new key.';
    END IF;
    -- Terminal keys: nothing but a revocation (of an expired key) may change, and that
    -- only in status and status_reason.
    IF (NEW.name, NEW.description, NEW.owner, NEW.scopes, NEW.allowed_cidrs,
        NEW.expires_at, NEW.rate_limit_per_minute, NEW.rate_limit_per_hour, NEW.metadata)
       IS DISTINCT FROM
       (OLD.name, OLD.description, OLD.owner, OLD.scopes, OLD.allowed_cidrs,
        OLD.expires_at, OLD.rate_limit_per_minute, OLD.rate_limit_per_hour, OLD.metadata)
       OR (NEW.status IS NOT DISTINCT FROM OLD.status
           AND NEW.status_reason IS DISTINCT FROM OLD.status_reason) THEN
        PERFORM api_keys._check_editable(OLD);
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        PERFORM api_keys._check_transition(OLD, NEW.status);
        IF NEW.status = 'revoked' AND coalesce(btrim(NEW.status_reason), '') = '' THEN
            RAISE EXCEPTION 'status_reason is required to revoke key %', OLD.prefix
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'UPDATE api_keys.keys SET status = ''revoked'', status_reason = ''why'' ...';
        END IF;
        NEW.status_changed_at := now();
        IF NEW.status = 'expired' AND (NEW.expires_at IS NULL OR NEW.expires_at > now()) THEN
            NEW.expires_at := now();
        END IF;
    END IF;
    -- Ending a key goes through its status (and is audited as such), not a past date,
    -- also when the same UPDATE changes the status.
    IF NEW.expires_at IS DISTINCT FROM OLD.expires_at AND NEW.status <> 'expired' THEN
        NEW.expires_at := api_keys._check_expiry(NEW.expires_at);
    END IF;
    PERFORM api_keys._check_bounds(NEW, OLD);
    IF NEW.allowed_cidrs IS DISTINCT FROM OLD.allowed_cidrs THEN
        NEW.allowed_cidrs := api_keys._check_cidrs(NEW.allowed_cidrs);
    END IF;
    IF NEW.scopes IS DISTINCT FROM OLD.scopes THEN
        NEW.scopes := api_keys._check_scopes(NEW.scopes, true);
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER keys_guard BEFORE UPDATE ON api_keys.keys
    FOR EACH ROW EXECUTE FUNCTION api_keys._keys_guard();

-- An audited value. Rows written before the input bounds may hold values too large
-- for an audit entry, or for jsonb at all: their size is recorded instead, so such a
-- key can still be revoked, expired and edited.
CREATE FUNCTION api_keys._audit_value(v anyelement) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    bytes integer := octet_length(v::text);
BEGIN
    IF bytes > 65536 THEN
        RETURN jsonb_build_object('omitted_bytes', bytes);
    END IF;
    RETURN to_jsonb(v);
END
$$;

-- One edited column of an audit entry: {"<column>": {"old": ..., "new": ...}}, or '{}'
-- when unchanged.
CREATE FUNCTION api_keys._audit_change(col text, old_value anyelement, new_value anyelement) RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN old_value IS DISTINCT FROM new_value
                THEN jsonb_build_object(col, jsonb_build_object(
                         'old', api_keys._audit_value(old_value), 'new', api_keys._audit_value(new_value)))
                ELSE '{}'::jsonb
           END
$$;

-- AFTER UPDATE/DELETE: every change is audited, whoever makes it. Inserts are audited
-- by api_key_issue itself, so that restoring a dump does not invent 'issued' entries.
-- The trigger function is an entry point (as the management functions are) so that a
-- direct UPDATE is audited under the role that ran it.
CREATE FUNCTION api_keys._impl_keys_audit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    changes jsonb;
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM api_keys.usage WHERE key_id OPERATOR(pg_catalog.=) OLD.id;
        PERFORM api_keys._audit('deleted', OLD, api_keys._effective_status(OLD.status, OLD.expires_at),
                                NULL, NULL, jsonb_build_object('name', api_keys._audit_value(OLD.name),
                                                               'owner', api_keys._audit_value(OLD.owner)));
        RETURN OLD;
    END IF;
    -- The columns an UPDATE may change (the guard keeps the others fixed), each only
    -- when changed. Status has its own audit columns; last use and the hash are not
    -- edits and never logged.
    changes := api_keys._audit_change('name', OLD.name, NEW.name)
            || api_keys._audit_change('description', OLD.description, NEW.description)
            || api_keys._audit_change('owner', OLD.owner, NEW.owner)
            || api_keys._audit_change('scopes', OLD.scopes, NEW.scopes)
            || api_keys._audit_change('allowed_cidrs', OLD.allowed_cidrs, NEW.allowed_cidrs)
            || api_keys._audit_change('expires_at', OLD.expires_at, NEW.expires_at)
            || api_keys._audit_change('rate_limit_per_minute', OLD.rate_limit_per_minute, NEW.rate_limit_per_minute)
            || api_keys._audit_change('rate_limit_per_hour', OLD.rate_limit_per_hour, NEW.rate_limit_per_hour)
            || api_keys._audit_change('metadata', OLD.metadata, NEW.metadata);
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        -- The reason of a status change has its own column.
        PERFORM api_keys._audit(
            CASE NEW.status WHEN 'active' THEN 'reactivated' ELSE NEW.status::text END,
            NEW, OLD.status, NEW.status, NEW.status_reason, nullif(changes, '{}'::jsonb));
    ELSE
        changes := changes || api_keys._audit_change('status_reason', OLD.status_reason, NEW.status_reason);
        IF changes <> '{}'::jsonb THEN
            PERFORM api_keys._audit('updated', NEW, OLD.status, NEW.status, NULL, changes);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION api_keys._keys_audit() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'api_keys_as_caller';

CREATE TRIGGER keys_audit AFTER UPDATE OR DELETE ON api_keys.keys
    FOR EACH ROW EXECUTE FUNCTION api_keys._keys_audit();

-- The audit log is append-only. audit_prune() deletes with session_replication_role =
-- replica, under which this (ordinary) trigger does not fire.
CREATE FUNCTION api_keys._audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'api_keys.audit_log is append-only'
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Use api_keys.audit_prune(older_than) to remove old entries.';
END
$$;

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON api_keys.audit_log
    FOR EACH ROW EXECUTE FUNCTION api_keys._audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON api_keys.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION api_keys._audit_log_append_only();
