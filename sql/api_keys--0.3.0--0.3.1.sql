-- api_keys 0.3.0 -> 0.3.1
\echo Use "ALTER EXTENSION api_keys UPDATE TO '0.3.1'" to load this file. \quit

-- Fixes, same signatures (CREATE OR REPLACE keeps grants and comments):
-- * keys_guard checks a changed expires_at also when the same UPDATE changes the
--   status (no backdating an expiry alongside a suspension);
-- * api_key_rotate's grace counts from the statement, not the transaction start, so a
--   short grace in a long transaction no longer fails the expiry check;
-- * api_key_update leaves scopes, CIDRs and expiry to the guard (validated once) and
--   warns about a recently used key only when what is stored changes;
-- * expire_due records 'expires_at passed' rather than keeping a suspension's reason.

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
    IF NEW.allowed_cidrs IS DISTINCT FROM OLD.allowed_cidrs THEN
        NEW.allowed_cidrs := api_keys._check_cidrs(NEW.allowed_cidrs);
    END IF;
    IF NEW.scopes IS DISTINCT FROM OLD.scopes THEN
        NEW.scopes := api_keys._check_scopes(NEW.scopes, true);
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION api_keys.api_key_rotate(key_id uuid, grace interval DEFAULT '0')
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
        name = CASE WHEN api_key_update.name IS NULL THEN keys.name
                    ELSE api_keys._check_name(api_key_update.name) END,
        -- '' clears the description
        description = CASE WHEN api_key_update.description IS NULL THEN keys.description
                           ELSE nullif(api_key_update.description, '') END,
        scopes = coalesce(api_key_update.scopes, keys.scopes),
        allowed_cidrs = coalesce(api_key_update.allowed_cidrs, keys.allowed_cidrs),
        expires_at = coalesce(api_key_update.expires_at, keys.expires_at),
        rate_limit_per_minute = coalesce(api_keys._check_limit('rate_limit_per_minute', api_key_update.rate_limit_per_minute), keys.rate_limit_per_minute),
        rate_limit_per_hour = coalesce(api_keys._check_limit('rate_limit_per_hour', api_key_update.rate_limit_per_hour), keys.rate_limit_per_hour),
        metadata = coalesce(api_keys._check_metadata(api_key_update.metadata), keys.metadata)
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

CREATE OR REPLACE FUNCTION api_keys.expire_due() RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    expired integer;
BEGIN
    UPDATE api_keys.keys
       SET status = 'expired',
           status_reason = 'expires_at passed' -- not a suspension's reason
     WHERE status IN ('active', 'suspended')
       AND expires_at <= statement_timestamp();
    GET DIAGNOSTICS expired = ROW_COUNT;
    RETURN expired;
END $$;
