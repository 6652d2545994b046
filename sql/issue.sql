-- Issuing, rotating and updating keys, and the scope catalog. Keys are minted and
-- signed in Rust (_mint_signed_key, src/sql_api/issue.rs); each public function is an entry point into its
-- _impl_ version (src/sql_api/as_caller.rs).

-- Mint, hash and store a key described by template `t`; audit 'issued'.
CREATE FUNCTION api_keys._create_key(t api_keys.keys)
RETURNS TABLE (id uuid, key text, prefix text, expires_at timestamptz)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    minted record;
BEGIN
    SELECT * INTO STRICT minted FROM api_keys._mint_signed_key(t.environment::text);
    t.id := gen_random_uuid();
    t.prefix := minted.prefix;
    t.secret_hash := minted.secret_hash;
    t.signing_key := minted.signing_key;
    t.status := 'active';
    t.created_at := now();
    t.created_by := api_keys._caller();
    -- Its credits start now, none spent; its owner's limits are copied by a trigger.
    t.uses_from := CASE WHEN t.uses_granted IS NOT NULL THEN clock_timestamp() END;
    t.uses_period := NULL;
    t.uses_spent := 0;
    INSERT INTO api_keys.keys SELECT t.*;
    PERFORM api_keys._audit('issued', t, NULL, 'active', NULL,
        -- (a key rotated from one written before the input bounds may be large)
        jsonb_strip_nulls(jsonb_build_object(
            'name', api_keys._audit_value(t.name), 'owner', api_keys._audit_value(t.owner),
            'key_type', t.key_type, 'environment', t.environment,
            'scopes', api_keys._audit_value(t.scopes), 'expires_at', t.expires_at,
            'rotated_from', t.rotated_from, 'remaining_uses', t.uses_granted,
            'refill_amount', t.refill_amount, 'refill_interval', t.refill_interval)));
    RETURN QUERY SELECT t.id, minted.key, t.prefix, t.expires_at;
END $$;

-- A validated template for a new key; api_key_issue mints and stores it.
CREATE FUNCTION api_keys._issue_template(
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
    metadata jsonb,
    remaining_uses bigint,
    refill_amount bigint,
    refill_interval text
) RETURNS api_keys.keys
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
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
    PERFORM api_keys._check_credits('remaining_uses', _issue_template.remaining_uses,
                                    _issue_template.refill_amount, _issue_template.refill_interval);
    t.uses_granted := _issue_template.remaining_uses;
    t.refill_amount := _issue_template.refill_amount;
    t.refill_interval := _issue_template.refill_interval;
    RETURN t;
END $$;

-- SQL, not PL/pgSQL: the contract gives an input and an output column the same name
-- (expires_at), which PL/pgSQL cannot compile.
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
    metadata jsonb,
    remaining_uses bigint,
    refill_amount bigint,
    refill_interval text
) RETURNS TABLE (id uuid, key text, prefix text, expires_at timestamptz)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM api_keys._create_key(
        api_keys._issue_template($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14))
$$;

CREATE FUNCTION api_keys.api_key_issue(
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
    metadata jsonb DEFAULT '{}',
    remaining_uses bigint DEFAULT NULL,
    refill_amount bigint DEFAULT NULL,
    refill_interval text DEFAULT NULL
) RETURNS TABLE (id uuid, key text, prefix text, expires_at timestamptz)
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'api_keys_as_caller';

CREATE FUNCTION api_keys._impl_api_key_rotate(key_id uuid, grace interval, remaining_uses bigint)
RETURNS TABLE (id uuid, key text, prefix text, expires_at timestamptz)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
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
    -- The new key's credits: those given, else what the old key has left now (as
    -- written; NULL: unlimited), with the old key's refill.
    t.uses_granted := coalesce(remaining_uses, api_keys._remaining_uses(k, statement_timestamp()));
    PERFORM api_keys._check_credits('remaining_uses', t.uses_granted, t.refill_amount, t.refill_interval);
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

CREATE FUNCTION api_keys.api_key_rotate(key_id uuid, grace interval DEFAULT '0', remaining_uses bigint DEFAULT NULL)
RETURNS TABLE (id uuid, key text, prefix text, expires_at timestamptz)
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'api_keys_as_caller';

CREATE FUNCTION api_keys._impl_api_key_update(
    key_id uuid,
    name text,
    description text,
    scopes text[],
    allowed_cidrs cidr[],
    expires_at timestamptz,
    rate_limit_per_minute integer,
    rate_limit_per_hour integer,
    metadata jsonb,
    remaining_uses bigint,
    refill_amount bigint,
    refill_interval text
) RETURNS api_keys.key_list
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k api_keys.keys := api_keys._key_for_update(key_id);
    stored api_keys.keys;
    credits api_keys.keys := k;
BEGIN
    -- Before any validation: a terminal key says so first.
    PERFORM api_keys._check_editable(k);
    -- Credits, each NULL unchanged. New remaining_uses, or a new refill, start a new
    -- period now (the guard resets the uses spent when uses_from moves); a new refill
    -- alone keeps the uses left (as written).
    credits.refill_amount := coalesce(_impl_api_key_update.refill_amount, k.refill_amount);
    credits.refill_interval := coalesce(_impl_api_key_update.refill_interval, k.refill_interval);
    IF _impl_api_key_update.remaining_uses IS NOT NULL
       OR (credits.refill_amount, credits.refill_interval) IS DISTINCT FROM (k.refill_amount, k.refill_interval) THEN
        credits.uses_granted := coalesce(_impl_api_key_update.remaining_uses,
                                         api_keys._remaining_uses(k, statement_timestamp()));
        PERFORM api_keys._check_credits('remaining_uses', credits.uses_granted,
                                        credits.refill_amount, credits.refill_interval);
        credits.uses_from := CASE WHEN credits.uses_granted IS NOT NULL THEN clock_timestamp() END;
    END IF;
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
        metadata = coalesce(api_keys._check_metadata(_impl_api_key_update.metadata), keys.metadata),
        uses_granted = credits.uses_granted,
        uses_from = credits.uses_from,
        refill_amount = credits.refill_amount,
        refill_interval = credits.refill_interval
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

CREATE FUNCTION api_keys.api_key_update(
    key_id uuid,
    name text DEFAULT NULL,
    description text DEFAULT NULL,
    scopes text[] DEFAULT NULL,
    allowed_cidrs cidr[] DEFAULT NULL,
    expires_at timestamptz DEFAULT NULL,
    rate_limit_per_minute integer DEFAULT NULL,
    rate_limit_per_hour integer DEFAULT NULL,
    metadata jsonb DEFAULT NULL,
    remaining_uses bigint DEFAULT NULL,
    refill_amount bigint DEFAULT NULL,
    refill_interval text DEFAULT NULL
) RETURNS api_keys.key_list
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'api_keys_as_caller';

-- The key's credits, all three given: remaining_uses from now (NULL: unlimited, no
-- refill), and the refill (NULL, NULL: none). A new period starts now, none spent.
CREATE FUNCTION api_keys._impl_api_key_set_credits(key_id uuid, remaining_uses bigint,
                                                   refill_amount bigint, refill_interval text)
RETURNS api_keys.key_list
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k api_keys.keys := api_keys._key_for_update(key_id);
BEGIN
    PERFORM api_keys._check_editable(k);
    PERFORM api_keys._check_credits('remaining_uses', remaining_uses, refill_amount, refill_interval);
    UPDATE api_keys.keys SET
        uses_granted = _impl_api_key_set_credits.remaining_uses,
        uses_from = CASE WHEN _impl_api_key_set_credits.remaining_uses IS NOT NULL THEN clock_timestamp() END,
        refill_amount = _impl_api_key_set_credits.refill_amount,
        refill_interval = _impl_api_key_set_credits.refill_interval
     WHERE keys.id = k.id;
    RETURN api_keys._listed(k.id);
END $$;

CREATE FUNCTION api_keys.api_key_set_credits(key_id uuid, remaining_uses bigint,
                                             refill_amount bigint DEFAULT NULL,
                                             refill_interval text DEFAULT NULL)
RETURNS api_keys.key_list
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'api_keys_as_caller';

CREATE FUNCTION api_keys.api_key_register_scope(resource text, action text, description text DEFAULT NULL)
RETURNS api_keys.scope_catalog
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
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
