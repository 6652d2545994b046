-- Field validators shared by issue, update and the guard trigger: 22023 naming the
-- field, with a hint; the input bounds (README, "Input bounds") come first. Scopes are
-- checked in Rust (_check_scopes, src/sql_api/issue.rs).

CREATE FUNCTION api_keys._check_length(field text, value text, max_characters integer) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Bytes first: a huge text is refused without counting its characters.
    IF octet_length(value) > max_characters AND
       (octet_length(value) > 4 * max_characters OR length(value) > max_characters) THEN
        RAISE EXCEPTION '% is longer than % characters', field, max_characters
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = format('api_keys limits %s to %s characters.', field, max_characters);
    END IF;
END $$;

-- Input bounds (README, "Input bounds"): what real keys need, with headroom, so that
-- every key row and every audit entry of it stays small. Checked for each field that
-- `k` sets or changes against `old` (NULL for a new key), before any costly work; rows
-- written before the bounds existed can still change their other fields.
CREATE FUNCTION api_keys._check_bounds(k api_keys.keys, old api_keys.keys) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
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
    IF (k.uses_granted, k.refill_amount, k.refill_interval)
       IS DISTINCT FROM (old.uses_granted, old.refill_amount, old.refill_interval) THEN
        PERFORM api_keys._check_credits('uses_granted', k.uses_granted, k.refill_amount, k.refill_interval);
    END IF;
END $$;

-- Credits: the uses (named `uses_field`: remaining_uses in the functions, uses_granted
-- in a direct UPDATE) 0 to 10^12 or NULL for unlimited; a refill is an amount 1 to 10^12
-- and an interval, both or neither, and only with uses.
CREATE FUNCTION api_keys._check_credits(uses_field text, uses bigint, refill_amount bigint, refill_interval text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF uses NOT BETWEEN 0 AND 1000000000000 THEN
        RAISE EXCEPTION '% must be between 0 and 1000000000000 (got %)', uses_field, uses
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = format('api_keys limits %s to 0 .. 1,000,000,000,000; leave it NULL for unlimited uses.', uses_field);
    ELSIF refill_amount NOT BETWEEN 1 AND 1000000000000 THEN
        RAISE EXCEPTION 'refill_amount must be between 1 and 1000000000000 (got %)', refill_amount
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'api_keys limits refill_amount to 1 .. 1,000,000,000,000 uses a refill.';
    ELSIF refill_interval NOT IN ('daily', 'monthly') THEN
        -- (not repeated: it may be long)
        RAISE EXCEPTION 'refill_interval must be daily or monthly'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Refills happen at the start of each UTC day (daily) or month (monthly).';
    ELSIF (refill_amount IS NULL) <> (refill_interval IS NULL) THEN
        RAISE EXCEPTION 'refill_amount and refill_interval go together'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Give both for a refill (e.g. refill_amount => 1000, refill_interval => ''daily''), or neither.';
    ELSIF refill_amount IS NOT NULL AND uses IS NULL THEN
        RAISE EXCEPTION 'a refill needs %', uses_field
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = format('A key without %s has unlimited uses; give it %s (its uses until the first refill).', uses_field, uses_field);
    END IF;
END $$;

CREATE FUNCTION api_keys._check_name(name text) RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- The bound first: a huge name is refused before it is trimmed (copied).
    PERFORM api_keys._check_length('name', name, 200);
    IF name IS NULL OR btrim(name) = '' THEN
        RAISE EXCEPTION 'name must not be empty' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN btrim(name);
END $$;

CREATE FUNCTION api_keys._check_expiry(expires_at timestamptz) RETURNS timestamptz
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF expires_at = 'infinity' THEN
        RETURN NULL;  -- never
    ELSIF expires_at <= statement_timestamp() THEN
        RAISE EXCEPTION 'expires_at must be in the future (got %)', expires_at
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use NULL or ''infinity'' for a key that never expires, or revoke the key to end it now.';
    END IF;
    RETURN expires_at;
END $$;

CREATE FUNCTION api_keys._check_limit(field text, value integer) RETURNS integer
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF value <= 0 THEN
        RAISE EXCEPTION '% must be positive (got %)', field, value
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Leave it NULL for the server default.';
    END IF;
    RETURN value;
END $$;

CREATE FUNCTION api_keys._check_cidrs(allowed_cidrs cidr[]) RETURNS cidr[]
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
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

CREATE FUNCTION api_keys._check_metadata(metadata jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF metadata IS NOT NULL AND jsonb_typeof(metadata) <> 'object' THEN
        RAISE EXCEPTION 'metadata must be a JSON object (got %)', jsonb_typeof(metadata)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN metadata;
END $$;

CREATE FUNCTION api_keys._require_reason(reason text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF reason IS NULL OR btrim(reason) = '' THEN
        RAISE EXCEPTION 'reason is required to revoke a key' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Say why, e.g. ''leaked in a public repository''. It is kept in the audit log.';
    END IF;
END $$;

-- The isolation level a function needs to see every change committed before each of
-- its statements (25000 otherwise, naming the function).
CREATE FUNCTION api_keys._require_read_committed(what text) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION '% runs only at READ COMMITTED, not %',
                        what, upper(current_setting('transaction_isolation'))
            USING ERRCODE = 'invalid_transaction_state',
                  HINT = 'Run it in a transaction at READ COMMITTED: BEGIN ISOLATION LEVEL READ COMMITTED.';
    END IF;
END $$;
