-- api_keys 0.3.1 -> 0.4.0: hostile roles (issue 12).
-- * Management functions act for the role at their call site: each public function is
--   now an entry point (LANGUAGE c, SECURITY INVOKER) into its SECURITY DEFINER
--   _impl_ version; api_keys._caller() answers that role. The audit trigger likewise.
-- * Input bounds on every field a role can set (_check_bounds, _check_length, and
--   counts in _check_cidrs and _check_scopes).
-- * Audit entries record only changed columns; oversized legacy values by their size.
-- * expire_due() and the worker skip keys a user has locked and keys that fail.
-- * has_scope(): NULL and any text answer true or false, never an error.
-- CREATE OR REPLACE keeps every existing function's oid, privileges and comment.

CREATE OR REPLACE FUNCTION api_keys._caller() RETURNS text
LANGUAGE c STABLE PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'api_keys_caller';

CREATE OR REPLACE FUNCTION api_keys._caller_is_admin() RETURNS boolean
LANGUAGE sql STABLE PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_has_role(api_keys._caller()::name, 'api_keys_admin', 'MEMBER')
$$;

CREATE FUNCTION api_keys._check_length(field text, value text, max_characters integer) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- Bytes first: a huge text is refused without counting its characters.
    IF octet_length(value) > max_characters AND
       (octet_length(value) > 4 * max_characters OR length(value) > max_characters) THEN
        RAISE EXCEPTION '% is longer than % characters', field, max_characters
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = format('api_keys limits %s to %s characters.', field, max_characters);
    END IF;
END $$;

CREATE FUNCTION api_keys._check_bounds(k api_keys.keys, old api_keys.keys) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    metadata_bytes integer;
BEGIN
    IF k.name IS DISTINCT FROM old.name THEN
        PERFORM api_keys._check_length('name', k.name, 200);
    END IF;
    IF k.description IS DISTINCT FROM old.description THEN
        PERFORM api_keys._check_length('description', k.description, 2000);
    END IF;
    IF k.owner IS DISTINCT FROM old.owner THEN
        PERFORM api_keys._check_length('owner', k.owner, 200);
    END IF;
    IF k.status_reason IS DISTINCT FROM old.status_reason THEN
        PERFORM api_keys._check_length('reason', k.status_reason, 1000);
    END IF;
    IF k.metadata IS DISTINCT FROM old.metadata THEN
        metadata_bytes := octet_length(k.metadata::text);
    END IF;
    IF metadata_bytes > 16384 THEN
        RAISE EXCEPTION 'metadata is too large: % bytes as JSON text (at most 16384)', metadata_bytes
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'api_keys limits metadata to 16 KiB of JSON; keep bulky data in your own table, keyed by the key id.';
    END IF;
END $$;

CREATE OR REPLACE FUNCTION api_keys._check_name(name text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- The bound first: a huge name is refused before it is trimmed (copied).
    PERFORM api_keys._check_length('name', name, 200);
    IF name IS NULL OR btrim(name) = '' THEN
        RAISE EXCEPTION 'name must not be empty' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN btrim(name);
END $$;

CREATE OR REPLACE FUNCTION api_keys._check_cidrs(allowed_cidrs cidr[]) RETURNS cidr[]
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c cidr;
BEGIN
    IF allowed_cidrs IS NULL THEN
        RETURN '{}';
    ELSIF cardinality(allowed_cidrs) > 256 THEN
        RAISE EXCEPTION 'allowed_cidrs has % entries; a key holds at most 256', cardinality(allowed_cidrs)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'api_keys limits allowed_cidrs to 256 networks; a shorter prefix (e.g. 10.0.0.0/8) covers many.';
    END IF;
    FOREACH c IN ARRAY allowed_cidrs LOOP
        IF c IS NULL THEN
            RAISE EXCEPTION 'allowed_cidrs must not contain NULL' USING ERRCODE = 'invalid_parameter_value';
        ELSIF masklen(c) = 0 THEN
            RAISE WARNING 'allowed_cidrs entry % admits every % client', c,
                          CASE family(c) WHEN 4 THEN 'IPv4' ELSE 'IPv6' END
                USING HINT = 'IPv4 and IPv6 rules are matched independently; omit allowed_cidrs to allow all.';
        END IF;
    END LOOP;
    RETURN ARRAY(SELECT DISTINCT x FROM unnest(allowed_cidrs) x ORDER BY x);
END $$;

CREATE OR REPLACE FUNCTION api_keys._create_key(t api_keys.keys)
RETURNS TABLE (id uuid, key text, prefix text, expires_at timestamptz)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    minted record;
BEGIN
    SELECT * INTO STRICT minted FROM api_keys._mint_key(t.environment::text);
    t.id := gen_random_uuid();
    t.prefix := minted.prefix;
    t.secret_hash := minted.secret_hash;
    t.status := 'active';
    t.created_at := now();
    t.created_by := api_keys._caller();
    INSERT INTO api_keys.keys SELECT t.*;
    PERFORM api_keys._audit('issued', t, NULL, 'active', NULL,
        -- (a key rotated from one written before the input bounds may be large)
        jsonb_strip_nulls(jsonb_build_object(
            'name', api_keys._audit_value(t.name), 'owner', api_keys._audit_value(t.owner),
            'key_type', t.key_type, 'environment', t.environment,
            'scopes', api_keys._audit_value(t.scopes), 'expires_at', t.expires_at,
            'rotated_from', t.rotated_from)));
    RETURN QUERY SELECT t.id, minted.key, t.prefix, t.expires_at;
END $$;

CREATE OR REPLACE FUNCTION api_keys._issue_template(
    name text,
    key_type api_keys.key_type,
    environment api_keys.environment,
    scopes text[],
    description text,
    expires_at timestamptz,
    allowed_cidrs cidr[],
    owner text,
    rate_limit_per_minute integer,
    rate_limit_per_hour integer,
    metadata jsonb
) RETURNS api_keys.keys
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    caller text := api_keys._caller();
    t api_keys.keys;
BEGIN
    -- Before the owner is trimmed or named in a message.
    PERFORM api_keys._check_length('owner', owner, 200);
    IF key_type IS NULL THEN
        RAISE EXCEPTION 'key_type must not be NULL' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'One of: service, user.';
    ELSIF environment IS NULL THEN
        RAISE EXCEPTION 'environment must not be NULL' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'One of: production, staging, development.';
    ELSIF owner IS NOT NULL AND btrim(owner) = '' THEN
        RAISE EXCEPTION 'owner must not be empty' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Leave it NULL to own the key yourself.';
    ELSIF owner IS NOT NULL AND owner <> caller AND NOT api_keys._caller_is_admin() THEN
        RAISE EXCEPTION 'role % may only issue keys it owns itself, not for owner %', caller, owner
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Leave owner NULL, or ask a member of api_keys_admin.';
    END IF;
    t.name := api_keys._check_name(_issue_template.name);
    t.description := _issue_template.description;
    t.key_type := _issue_template.key_type;
    t.environment := _issue_template.environment;
    t.owner := coalesce(_issue_template.owner, caller);
    t.metadata := coalesce(api_keys._check_metadata(_issue_template.metadata), '{}');
    PERFORM api_keys._check_bounds(t, NULL);
    t.scopes := api_keys._check_scopes(_issue_template.scopes, true);
    t.allowed_cidrs := api_keys._check_cidrs(_issue_template.allowed_cidrs);
    t.expires_at := api_keys._check_expiry(_issue_template.expires_at);
    t.rate_limit_per_minute := api_keys._check_limit('rate_limit_per_minute', _issue_template.rate_limit_per_minute);
    t.rate_limit_per_hour := api_keys._check_limit('rate_limit_per_hour', _issue_template.rate_limit_per_hour);
    RETURN t;
END $$;

CREATE OR REPLACE FUNCTION api_keys._keys_guard() RETURNS trigger
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

CREATE OR REPLACE FUNCTION api_keys._keys_audit() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'api_keys_as_caller';

CREATE FUNCTION api_keys._impl_api_key_issue(
    name text,
    key_type api_keys.key_type,
    environment api_keys.environment,
    scopes text[],
    description text,
    expires_at timestamptz,
    allowed_cidrs cidr[],
    owner text,
    rate_limit_per_minute integer,
    rate_limit_per_hour integer,
    metadata jsonb
) RETURNS TABLE (id uuid, key text, prefix text, expires_at timestamptz)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM api_keys._create_key(
        api_keys._issue_template($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11))
$$;

CREATE FUNCTION api_keys._impl_api_key_suspend(key_id uuid, reason text)
RETURNS api_keys.key_list
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT api_keys._change_status(key_id, 'suspended', reason)
$$;

CREATE FUNCTION api_keys._impl_api_key_reactivate(key_id uuid)
RETURNS api_keys.key_list
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT api_keys._change_status(key_id, 'active', NULL)
$$;

CREATE FUNCTION api_keys._impl_api_key_revoke(key_id uuid, reason text)
RETURNS api_keys.key_list
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM api_keys._require_reason(reason);
    RETURN api_keys._change_status(key_id, 'revoked', reason);
END $$;

CREATE FUNCTION api_keys._impl_api_key_set_status(key_id uuid, status api_keys.key_status, reason text)
RETURNS api_keys.key_list
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF status = 'revoked' THEN
        PERFORM api_keys._require_reason(reason);
    END IF;
    RETURN api_keys._change_status(key_id, status, reason);
END $$;

CREATE FUNCTION api_keys._impl_api_key_delete(key_id uuid)
RETURNS api_keys.key_list
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k api_keys.keys := api_keys._key_for_update(key_id);
    shown api_keys.key_list := api_keys._listed(k.id);
BEGIN
    DELETE FROM api_keys.keys WHERE id = k.id;  -- audited by the trigger
    RETURN shown;
END $$;

CREATE FUNCTION api_keys._impl_api_key_rotate(key_id uuid, grace interval)
RETURNS TABLE (id uuid, key text, prefix text, expires_at timestamptz)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k api_keys.keys := api_keys._key_for_update(key_id);
    effective api_keys.key_status := api_keys._effective_status(k.status, k.expires_at);
    t api_keys.keys;
    fresh record;
BEGIN
    IF grace IS NULL OR grace < '0'::interval THEN
        RAISE EXCEPTION 'grace must be zero or a positive interval (got %)', grace
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'With grace 0 the old key is revoked at once.';
    ELSIF effective IN ('revoked', 'expired') THEN
        RAISE EXCEPTION 'key % is %; it cannot be rotated', k.prefix, effective
            USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'Issue a new key instead.';
    ELSIF effective = 'suspended' THEN
        RAISE EXCEPTION 'key % is suspended; reactivate it before rotating', k.prefix
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    t := k;
    t.rotated_from := k.id;
    t.status_reason := NULL;
    t.status_changed_at := NULL;
    t.last_used_at := NULL;
    t.last_used_ip := NULL;
    SELECT * INTO STRICT fresh FROM api_keys._create_key(t);
    PERFORM api_keys._audit('rotated', k, k.status, k.status, NULL,
        jsonb_build_object('new_key_id', fresh.id, 'new_prefix', fresh.prefix, 'grace', grace::text));
    IF grace = '0'::interval THEN
        UPDATE api_keys.keys SET status = 'revoked', status_reason = 'rotated to ' || fresh.prefix
         WHERE keys.id = k.id;
    ELSE
        -- Statement time, like every expiry check: in a transaction older than the
        -- grace, now() + grace would already be past.
        UPDATE api_keys.keys SET expires_at = least(k.expires_at, statement_timestamp() + grace)
         WHERE keys.id = k.id;
    END IF;
    RETURN QUERY SELECT fresh.id, fresh.key, fresh.prefix, fresh.expires_at;
END $$;

CREATE FUNCTION api_keys._impl_api_key_update(
    key_id uuid,
    name text,
    description text,
    scopes text[],
    allowed_cidrs cidr[],
    expires_at timestamptz,
    rate_limit_per_minute integer,
    rate_limit_per_hour integer,
    metadata jsonb
) RETURNS api_keys.key_list
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k api_keys.keys := api_keys._key_for_update(key_id);
    stored api_keys.keys;
BEGIN
    -- Before any validation: a terminal key says so first.
    PERFORM api_keys._check_editable(k);
    -- scopes, allowed_cidrs and expires_at are validated and normalised by the
    -- keys_guard trigger, as on every write.
    UPDATE api_keys.keys SET
        name = CASE WHEN _impl_api_key_update.name IS NULL THEN keys.name
                    ELSE api_keys._check_name(_impl_api_key_update.name) END,
        -- '' clears the description
        description = CASE WHEN _impl_api_key_update.description IS NULL THEN keys.description
                           ELSE nullif(_impl_api_key_update.description, '') END,
        scopes = coalesce(_impl_api_key_update.scopes, keys.scopes),
        allowed_cidrs = coalesce(_impl_api_key_update.allowed_cidrs, keys.allowed_cidrs),
        expires_at = coalesce(_impl_api_key_update.expires_at, keys.expires_at),
        rate_limit_per_minute = coalesce(api_keys._check_limit('rate_limit_per_minute', _impl_api_key_update.rate_limit_per_minute), keys.rate_limit_per_minute),
        rate_limit_per_hour = coalesce(api_keys._check_limit('rate_limit_per_hour', _impl_api_key_update.rate_limit_per_hour), keys.rate_limit_per_hour),
        metadata = coalesce(api_keys._check_metadata(_impl_api_key_update.metadata), keys.metadata)
     WHERE keys.id = k.id
    RETURNING keys.* INTO stored;
    -- Compared as stored: the same networks in another order are no change.
    IF (stored.scopes, stored.allowed_cidrs) IS DISTINCT FROM (k.scopes, k.allowed_cidrs)
       AND k.last_used_at > now() - interval '24 hours' THEN
        RAISE WARNING 'key % was used in the last 24 hours; callers relying on its old scopes or networks may break', k.prefix
            USING HINT = 'Check recent callers, or rotate with a grace period instead.';
    END IF;
    RETURN api_keys._listed(k.id);
END $$;

CREATE FUNCTION api_keys._impl_api_key_list(
    status api_keys.key_status,
    environment api_keys.environment,
    search text,
    owner text,
    order_by text,
    page_size integer,
    page integer
) RETURNS SETOF api_keys.key_list
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    sortable CONSTANT text[] := ARRAY[
        'id', 'prefix', 'name', 'description', 'key_type', 'environment', 'owner', 'status',
        'status_reason', 'scopes', 'allowed_cidrs', 'expires_at', 'created_at', 'created_by',
        'last_used_at', 'last_used_ip', 'rotated_from', 'rate_limit_per_minute',
        'rate_limit_per_hour', 'metadata'];
    words text[];
    pattern text;
BEGIN
    PERFORM api_keys._check_length('order_by', order_by, 100);
    PERFORM api_keys._check_length('search', search, 200);
    PERFORM api_keys._check_length('owner', owner, 200);
    words := regexp_split_to_array(lower(btrim(coalesce(order_by, ''))), '\s+');
    IF array_length(words, 1) NOT BETWEEN 1 AND 2 OR NOT (words[1] = ANY (sortable))
       OR coalesce(words[2], 'asc') NOT IN ('asc', 'desc') THEN
        RAISE EXCEPTION 'order_by "%" is not a column of api_keys.key_list with optional asc or desc', order_by
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Sortable columns: ' || array_to_string(sortable, ', ') || '.';
    ELSIF page_size IS NULL OR page_size NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'page_size must be between 1 and 1000 (got %)', page_size
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF page IS NULL OR page < 1 THEN
        RAISE EXCEPTION 'page must be 1 or more (got %)', page
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- search is literal text: escape LIKE's wildcards.
    pattern := '%' || replace(replace(replace(search, '\', '\\'), '%', '\%'), '_', '\_') || '%';
    RETURN QUERY EXECUTE format(
        'SELECT * FROM api_keys.key_list l
          WHERE ($1 IS NULL OR l.status = $1)
            AND ($2 IS NULL OR l.environment = $2)
            AND ($3 IS NULL OR l.name ILIKE $3 OR l.prefix ILIKE $3)
            AND ($4 IS NULL OR l.owner = $4)
          ORDER BY l.%I %s NULLS LAST, l.id
          LIMIT $5 OFFSET $6',
        words[1], coalesce(words[2], 'asc'))
    USING status, environment, pattern, owner, page_size, (page::bigint - 1) * page_size;
END $$;

CREATE OR REPLACE FUNCTION api_keys.api_key_register_scope(resource text, action text, description text DEFAULT NULL)
RETURNS api_keys.scope_catalog
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    entry api_keys.scope_catalog;
BEGIN
    IF resource IS NULL OR action IS NULL THEN
        RAISE EXCEPTION 'resource and action must not be NULL' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM api_keys._check_length('resource', resource, 200);
    PERFORM api_keys._check_length('action', action, 200);
    PERFORM api_keys._check_length('description', description, 2000);
    PERFORM api_keys._check_scopes(ARRAY[resource || ':' || action], false);
    INSERT INTO api_keys.scope_catalog AS c (resource, action, description)
    VALUES (api_key_register_scope.resource, api_key_register_scope.action, api_key_register_scope.description)
    ON CONFLICT ON CONSTRAINT scope_catalog_pkey DO UPDATE SET description = EXCLUDED.description
    RETURNING c.* INTO entry;
    RETURN entry;
END $$;

CREATE FUNCTION api_keys._expire_keys(OUT expired integer, OUT skipped uuid[], OUT errors text[])
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- Locked here for the rest of the transaction; rows a user holds are left out.
    due uuid[] := ARRAY(SELECT id FROM api_keys.keys
                         WHERE status IN ('active', 'suspended')
                           AND expires_at <= statement_timestamp()
                           FOR UPDATE SKIP LOCKED);
    one uuid;
BEGIN
    skipped := '{}';
    errors := '{}';
    BEGIN
        expired := api_keys._mark_expired(due);
        RETURN;
    EXCEPTION WHEN OTHERS THEN
        expired := 0;
    END;
    FOREACH one IN ARRAY due LOOP
        BEGIN
            expired := expired + api_keys._mark_expired(ARRAY[one]);
        EXCEPTION WHEN OTHERS THEN
            skipped := skipped || one;
            errors := errors || SQLERRM;
        END;
    END LOOP;
END $$;

CREATE FUNCTION api_keys._mark_expired(ids uuid[]) RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    marked integer;
BEGIN
    UPDATE api_keys.keys
       SET status = 'expired',
           status_reason = 'expires_at passed' -- not a suspension's reason
     WHERE id = ANY (ids);
    GET DIAGNOSTICS marked = ROW_COUNT;
    RETURN marked;
END $$;

CREATE FUNCTION api_keys._impl_expire_due() RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    SELECT * INTO STRICT r FROM api_keys._expire_keys();
    FOR i IN 1 .. cardinality(r.skipped) LOOP
        RAISE WARNING 'key % could not be marked expired: %', r.skipped[i], r.errors[i]
            USING HINT = 'It verifies as expired all the same; the other keys were marked.';
    END LOOP;
    RETURN r.expired;
END $$;

CREATE OR REPLACE FUNCTION api_keys.api_key_issue(
    name text,
    key_type api_keys.key_type,
    environment api_keys.environment,
    scopes text[] DEFAULT ARRAY['*'],
    description text DEFAULT NULL,
    expires_at timestamptz DEFAULT NULL,
    allowed_cidrs cidr[] DEFAULT NULL,
    owner text DEFAULT NULL,
    rate_limit_per_minute integer DEFAULT NULL,
    rate_limit_per_hour integer DEFAULT NULL,
    metadata jsonb DEFAULT '{}'
) RETURNS TABLE (id uuid, key text, prefix text, expires_at timestamptz)
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'api_keys_as_caller';

CREATE OR REPLACE FUNCTION api_keys.api_key_suspend(key_id uuid, reason text DEFAULT NULL)
RETURNS api_keys.key_list
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'api_keys_as_caller';

CREATE OR REPLACE FUNCTION api_keys.api_key_reactivate(key_id uuid)
RETURNS api_keys.key_list
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'api_keys_as_caller';

CREATE OR REPLACE FUNCTION api_keys.api_key_revoke(key_id uuid, reason text)
RETURNS api_keys.key_list
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'api_keys_as_caller';

CREATE OR REPLACE FUNCTION api_keys.api_key_set_status(key_id uuid, status api_keys.key_status, reason text DEFAULT NULL)
RETURNS api_keys.key_list
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'api_keys_as_caller';

CREATE OR REPLACE FUNCTION api_keys.api_key_delete(key_id uuid)
RETURNS api_keys.key_list
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'api_keys_as_caller';

CREATE OR REPLACE FUNCTION api_keys.api_key_rotate(key_id uuid, grace interval DEFAULT '0')
RETURNS TABLE (id uuid, key text, prefix text, expires_at timestamptz)
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'api_keys_as_caller';

CREATE OR REPLACE FUNCTION api_keys.api_key_update(
    key_id uuid,
    name text DEFAULT NULL,
    description text DEFAULT NULL,
    scopes text[] DEFAULT NULL,
    allowed_cidrs cidr[] DEFAULT NULL,
    expires_at timestamptz DEFAULT NULL,
    rate_limit_per_minute integer DEFAULT NULL,
    rate_limit_per_hour integer DEFAULT NULL,
    metadata jsonb DEFAULT NULL
) RETURNS api_keys.key_list
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'api_keys_as_caller';

CREATE OR REPLACE FUNCTION api_keys.api_key_list(
    status api_keys.key_status DEFAULT NULL,
    environment api_keys.environment DEFAULT NULL,
    search text DEFAULT NULL,
    owner text DEFAULT NULL,
    order_by text DEFAULT 'created_at desc',
    page_size integer DEFAULT 50,
    page integer DEFAULT 1
) RETURNS SETOF api_keys.key_list
LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'api_keys_as_caller';

CREATE OR REPLACE FUNCTION api_keys.expire_due() RETURNS integer
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'api_keys_as_caller';

CREATE OR REPLACE FUNCTION api_keys.has_scope(required text) RETURNS boolean
LANGUAGE c STABLE CALLED ON NULL INPUT PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'api_keys_has_scope';
COMMENT ON FUNCTION api_keys.has_scope(text) IS
    'For RLS policies: does the key authenticated in this transaction grant the scope? False when none, for NULL and for any text that is not a scope.';

-- New functions are for the extension's own use only, as in a fresh install.
REVOKE ALL ON FUNCTION
    api_keys._check_length(text, text, integer),
    api_keys._check_bounds(api_keys.keys, api_keys.keys),
    api_keys._audit_value(anyelement),
    api_keys._audit_change(text, anyelement, anyelement),
    api_keys._impl_keys_audit(),
    api_keys._expire_keys(),
    api_keys._mark_expired(uuid[]),
    api_keys._impl_expire_due(),
    api_keys._impl_api_key_issue(text, api_keys.key_type, api_keys.environment, text[], text, timestamptz, cidr[], text, integer, integer, jsonb),
    api_keys._impl_api_key_suspend(uuid, text),
    api_keys._impl_api_key_reactivate(uuid),
    api_keys._impl_api_key_revoke(uuid, text),
    api_keys._impl_api_key_set_status(uuid, api_keys.key_status, text),
    api_keys._impl_api_key_delete(uuid),
    api_keys._impl_api_key_rotate(uuid, interval),
    api_keys._impl_api_key_update(uuid, text, text, text[], cidr[], timestamptz, integer, integer, jsonb),
    api_keys._impl_api_key_list(api_keys.key_status, api_keys.environment, text, text, text, integer, integer)
FROM PUBLIC;
