-- Keys named by prefix: every lifecycle function that takes a key's id also takes its
-- prefix (`ak_live_…`, as listings show it). Each overload takes `key_id text`, so a
-- quoted literal, id or prefix, resolves to it (PostgreSQL prefers text for an untyped
-- literal) and a uuid value to the uuid version; each is an entry point like the uuid
-- one, and its implementation names the key with _key_ref and calls the uuid one.
-- `key_id` may hold a secret (a whole key pasted where its prefix belongs):
-- PostgreSQL logs the text of a statement that fails, but not during these calls
-- (log_min_error_statement = panic, set for the call only, whatever fails in it).

-- The id of the key `key_id` names: a uuid as text, or a prefix (of a whole key too,
-- with a WARNING). A prefix no key the caller may manage has raises P0002, as an
-- unknown id does; anything else 22023, without repeating the input, and the
-- statement's text (which may hold a secret) is kept out of the server log.
CREATE FUNCTION api_keys._key_ref(key_id text) RETURNS uuid
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found uuid;
    -- Before the lookup, so that another owner's prefix and one nobody has take the
    -- same path.
    me text := api_keys._caller();
    admin boolean := api_keys._caller_is_admin();
    prefix_at_start text := '^(' || api_keys._prefix_pattern() || ')';
BEGIN
    IF key_id IS NULL THEN
        RAISE EXCEPTION 'key_id must not be NULL' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT (octet_length(key_id) <= 64 AND key_id ~ (prefix_at_start || '$')) THEN
        BEGIN
            RETURN key_id::uuid;
        EXCEPTION WHEN invalid_text_representation THEN
            -- Neither an id nor a prefix: it may hold a secret (a whole key, pasted
            -- with a space, say). The callers keep it out of the log (below).
            NULL;
        END;
        IF octet_length(key_id) > 128 OR key_id !~ (prefix_at_start || '_') THEN
            RAISE EXCEPTION 'key_id must be a key''s id (a uuid) or its prefix'
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'As api_keys.key_list shows them, e.g. ''ak_live_AbCdEf012345''.';
        END IF;
        -- A whole key, or most of one: its prefix names the key.
        key_id := (regexp_match(key_id, prefix_at_start))[1];
        RAISE WARNING 'key_id is a whole API key, secret included; its prefix % names the key', key_id
            USING HINT = 'Pass the prefix only. A key sent where it should not be is exposed: revoke it.';
    END IF;
    SELECT k.id INTO found FROM api_keys.keys k
     WHERE k.prefix = key_id AND (k.owner = me OR admin);
    IF found IS NULL THEN
        RAISE EXCEPTION 'no API key with prefix %', key_id
            USING ERRCODE = 'no_data_found',
                  HINT = 'The key does not exist, or it belongs to another owner.';
    END IF;
    RETURN found;
END $$;

CREATE FUNCTION api_keys._impl_api_key_suspend(key_id text, reason text)
RETURNS api_keys.key_list
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET log_min_error_statement = panic
AS $$ SELECT api_keys._impl_api_key_suspend(api_keys._key_ref(key_id), reason) $$;

CREATE FUNCTION api_keys.api_key_suspend(key_id text, reason text DEFAULT NULL)
RETURNS api_keys.key_list
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'api_keys_as_caller';

CREATE FUNCTION api_keys._impl_api_key_reactivate(key_id text)
RETURNS api_keys.key_list
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET log_min_error_statement = panic
AS $$ SELECT api_keys._impl_api_key_reactivate(api_keys._key_ref(key_id)) $$;

CREATE FUNCTION api_keys.api_key_reactivate(key_id text)
RETURNS api_keys.key_list
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'api_keys_as_caller';

CREATE FUNCTION api_keys._impl_api_key_revoke(key_id text, reason text)
RETURNS api_keys.key_list
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET log_min_error_statement = panic
AS $$ SELECT api_keys._impl_api_key_revoke(api_keys._key_ref(key_id), reason) $$;

CREATE FUNCTION api_keys.api_key_revoke(key_id text, reason text)
RETURNS api_keys.key_list
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'api_keys_as_caller';

CREATE FUNCTION api_keys._impl_api_key_set_status(key_id text, status api_keys.key_status, reason text)
RETURNS api_keys.key_list
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET log_min_error_statement = panic
AS $$ SELECT api_keys._impl_api_key_set_status(api_keys._key_ref(key_id), status, reason) $$;

CREATE FUNCTION api_keys.api_key_set_status(key_id text, status api_keys.key_status, reason text DEFAULT NULL)
RETURNS api_keys.key_list
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'api_keys_as_caller';

CREATE FUNCTION api_keys._impl_api_key_delete(key_id text)
RETURNS api_keys.key_list
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET log_min_error_statement = panic
AS $$ SELECT api_keys._impl_api_key_delete(api_keys._key_ref(key_id)) $$;

CREATE FUNCTION api_keys.api_key_delete(key_id text)
RETURNS api_keys.key_list
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'api_keys_as_caller';

CREATE FUNCTION api_keys._impl_api_key_rotate(key_id text, grace interval, remaining_uses bigint)
RETURNS TABLE (id uuid, key text, prefix text, expires_at timestamptz)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET log_min_error_statement = panic
AS $$ SELECT * FROM api_keys._impl_api_key_rotate(api_keys._key_ref(key_id), grace, remaining_uses) $$;

CREATE FUNCTION api_keys.api_key_rotate(key_id text, grace interval DEFAULT '0', remaining_uses bigint DEFAULT NULL)
RETURNS TABLE (id uuid, key text, prefix text, expires_at timestamptz)
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'api_keys_as_caller';

CREATE FUNCTION api_keys._impl_api_key_update(
    key_id text,
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
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET log_min_error_statement = panic
AS $$
    SELECT api_keys._impl_api_key_update(api_keys._key_ref(key_id), name, description, scopes,
                                         allowed_cidrs, expires_at, rate_limit_per_minute,
                                         rate_limit_per_hour, metadata, remaining_uses,
                                         refill_amount, refill_interval)
$$;

CREATE FUNCTION api_keys.api_key_update(
    key_id text,
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

CREATE FUNCTION api_keys._impl_api_key_set_credits(key_id text, remaining_uses bigint,
                                                   refill_amount bigint, refill_interval text)
RETURNS api_keys.key_list
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET log_min_error_statement = panic
AS $$
    SELECT api_keys._impl_api_key_set_credits(api_keys._key_ref(key_id), remaining_uses,
                                              refill_amount, refill_interval)
$$;

CREATE FUNCTION api_keys.api_key_set_credits(key_id text, remaining_uses bigint,
                                             refill_amount bigint DEFAULT NULL,
                                             refill_interval text DEFAULT NULL)
RETURNS api_keys.key_list
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'api_keys_as_caller';
