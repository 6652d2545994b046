-- The audit log: how entries are written, the trigger that audits every change of a
-- key, the append-only guard, and pruning; and the change events sent with them.

-- One audit entry. Status changes, rotations and deletions are also sent, at commit,
-- as a NOTIFY on channel `api_keys` (unless api_keys.change_events is off): JSON with
-- the audit entry's id, the action, key id, prefix, old and new status (and a
-- rotation's new key). Any role of the database may LISTEN, so nothing more: no owner,
-- name, reason, secret or hash.
CREATE FUNCTION api_keys._audit(
    action text, k api_keys.keys, old_status api_keys.key_status,
    new_status api_keys.key_status, reason text, details jsonb
) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    entry bigint;
BEGIN
    INSERT INTO api_keys.audit_log (key_id, prefix, action, actor, app_actor,
                                    old_status, new_status, reason, details)
    VALUES (k.id, k.prefix, action, api_keys._caller(),
            nullif(current_setting('api_keys.actor', true), ''),
            old_status, new_status, reason, coalesce(details, '{}'))
    RETURNING id INTO entry;
    IF action NOT IN ('suspended', 'reactivated', 'revoked', 'expired', 'rotated', 'deleted')
       OR NOT coalesce(current_setting('api_keys.change_events', true), 'on')::boolean THEN
        RETURN;
    END IF;
    -- A full notification queue fails every transaction that sent a NOTIFY, at commit,
    -- and any role can fill it (a listener left in an open transaction while others
    -- notify). Past half full the event is left out, so that a flood would have to fill
    -- the other half (4 GB) between a change and its commit to hold up a revocation;
    -- the audit log has the change all the same.
    IF pg_notification_queue_usage() >= 0.5 THEN
        RAISE WARNING 'no change event sent for key %: the notification queue is over half full', k.prefix
            USING HINT = format('The change is in api_keys.audit_log (entry %s). A session that listens on some channel is holding the queue in a long transaction.', entry);
        RETURN;
    END IF;
    -- The audit entry's id makes every event distinct (PostgreSQL delivers identical
    -- payloads of one transaction once), and says where to read more.
    PERFORM pg_notify('api_keys', (jsonb_build_object(
                'audit_id', entry, 'action', action, 'key_id', k.id, 'prefix', k.prefix,
                'old_status', old_status, 'new_status', new_status)
            || CASE WHEN action = 'rotated'
                    THEN jsonb_build_object('new_key_id', details -> 'new_key_id',
                                            'new_prefix', details -> 'new_prefix')
                    ELSE '{}' END)::text);
END
$$;

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
        DELETE FROM api_keys.credit_use WHERE key_id OPERATOR(pg_catalog.=) OLD.id;
        PERFORM api_keys._audit('deleted', OLD, api_keys._effective_status(OLD.status, OLD.expires_at),
                                NULL, NULL, jsonb_build_object('name', api_keys._audit_value(OLD.name),
                                                               'owner', api_keys._audit_value(OLD.owner)));
        RETURN OLD;
    END IF;
    -- The columns an UPDATE may change (the guard keeps the others fixed), each only
    -- when changed. Status has its own audit columns; last use, the uses spent, the
    -- copies of the owner's limits and the hash are not edits and never logged. New
    -- credits show as remaining_uses: the uses left before (as written) and given now.
    changes := api_keys._audit_change('name', OLD.name, NEW.name)
            || api_keys._audit_change('description', OLD.description, NEW.description)
            || api_keys._audit_change('owner', OLD.owner, NEW.owner)
            || api_keys._audit_change('scopes', OLD.scopes, NEW.scopes)
            || api_keys._audit_change('allowed_cidrs', OLD.allowed_cidrs, NEW.allowed_cidrs)
            || api_keys._audit_change('expires_at', OLD.expires_at, NEW.expires_at)
            || api_keys._audit_change('rate_limit_per_minute', OLD.rate_limit_per_minute, NEW.rate_limit_per_minute)
            || api_keys._audit_change('rate_limit_per_hour', OLD.rate_limit_per_hour, NEW.rate_limit_per_hour)
            || api_keys._audit_change('metadata', OLD.metadata, NEW.metadata)
            -- A new period is always an edit, even to as many uses as were left.
            || CASE WHEN (NEW.uses_granted, NEW.uses_from) IS DISTINCT FROM (OLD.uses_granted, OLD.uses_from)
                    THEN jsonb_build_object('remaining_uses', jsonb_build_object(
                             'old', api_keys._audit_value(api_keys._remaining_uses(OLD, statement_timestamp())),
                             'new', api_keys._audit_value(NEW.uses_granted)))
                    ELSE '{}'::jsonb END
            || api_keys._audit_change('refill_amount', OLD.refill_amount, NEW.refill_amount)
            || api_keys._audit_change('refill_interval', OLD.refill_interval, NEW.refill_interval);
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
LANGUAGE c
AS 'MODULE_PATHNAME', 'api_keys_as_caller';

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

CREATE FUNCTION api_keys.audit_prune(older_than interval) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- Ordinary triggers do not fire under replica: the append-only trigger lets this through.
SET session_replication_role = replica
AS $$
DECLARE
    removed bigint;
BEGIN
    IF older_than IS NULL OR older_than <= '0'::interval THEN
        RAISE EXCEPTION 'older_than must be a positive interval (got %)', older_than
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    DELETE FROM api_keys.audit_log WHERE at < now() - older_than;
    GET DIAGNOSTICS removed = ROW_COUNT;
    RETURN removed;
END $$;
