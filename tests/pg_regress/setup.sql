-- Helpers for the pg_regress tier. Run once by tests/run_pg_regress.sh after
-- CREATE EXTENSION api_keys, outside any transaction, as the superuser.
-- Everything here is SECURITY INVOKER: an error caught by expect_error is the error the
-- calling role (after SET ROLE) gets.
CREATE SCHEMA regress;
GRANT USAGE ON SCHEMA regress TO PUBLIC;

-- Mask the random parts of a message: key prefixes, uuids and timestamps.
CREATE FUNCTION regress.mask(t text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT regexp_replace(regexp_replace(regexp_replace(t,
        '[a-z0-9]{2,8}_(live|stage|dev)_[0-9A-Za-z]{12}', '<prefix>', 'g'),
        '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<uuid>', 'g'),
        -- ISO (2026-01-31 12:00:00.123+00) and Postgres (Sat Jan 31 12:00:00.123 2026 PST)
        '(\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d+)?([+-]\d{2}(:\d{2})?)?'
        '|[A-Z][a-z]{2} [A-Z][a-z]{2} \d{1,2} \d{2}:\d{2}:\d{2}(\.\d+)? \d{4}( [A-Z]{2,5}|[+-]\d{2}(:\d{2})?)?)',
        '<timestamp>', 'g')
$$;

-- Run one statement; return 'sqlstate: message [hint]' of the error it raises (random
-- parts masked), or 'no error'.
CREATE FUNCTION regress.expect_error(stmt text) RETURNS text
LANGUAGE plpgsql SECURITY INVOKER AS $$
DECLARE
    st text;
    msg text;
    hint text;
BEGIN
    EXECUTE stmt;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
    RETURN st || ': ' || regress.mask(msg)
        || coalesce(' [' || nullif(regress.mask(hint), '') || ']', '');
END
$$;

-- CRC-32 (IEEE 802.3, as crc32fast computes it) of the UTF-8 bytes of t.
CREATE FUNCTION regress.crc32(t text) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    b bytea := convert_to(t, 'UTF8');
    crc bigint := 4294967295;
BEGIN
    FOR i IN 0 .. length(b) - 1 LOOP
        crc := crc # get_byte(b, i);
        FOR j IN 1 .. 8 LOOP
            IF crc & 1 = 1 THEN
                crc := (crc >> 1) # 3988292384;  -- 0xEDB88320
            ELSE
                crc := crc >> 1;
            END IF;
        END LOOP;
    END LOOP;
    RETURN crc # 4294967295;
END
$$;

-- n in base62 (0-9A-Za-z), left-padded with '0' to six digits: the key checksum format.
CREATE FUNCTION regress.base62_6(n bigint) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    alphabet CONSTANT text := '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
    out text := '';
BEGIN
    LOOP
        out := substr(alphabet, (n % 62)::int + 1, 1) || out;
        n := n / 62;
        EXIT WHEN n = 0;
    END LOOP;
    RETURN lpad(out, 6, '0');
END
$$;

-- A string of the key shape with a correct checksum: `<prefix>_<secret>` plus the
-- checksum. Lets tests build keys that pass the cheap checks (unknown prefix, wrong
-- secret) without knowing any real secret.
CREATE FUNCTION regress.forge_key(prefix text, secret text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT prefix || '_' || secret || regress.base62_6(regress.crc32(prefix || '_' || secret))
$$;

-- Give a key a fixed prefix so messages that are not errors (WARNINGs) print the same
-- every run. Superuser only (it bypasses the immutable-column guard); the caller's
-- transaction is rolled back anyway.
CREATE FUNCTION regress.pin_prefix(key_id uuid, new_prefix text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    SET LOCAL session_replication_role = replica;
    UPDATE api_keys.keys SET prefix = new_prefix WHERE id = key_id;
    SET LOCAL session_replication_role = origin;
END
$$;

GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA regress TO PUBLIC;
REVOKE ALL ON FUNCTION regress.pin_prefix(uuid, text) FROM PUBLIC;

-- Move a key's expiry into the past, as time would. Direct UPDATEs may not do that (the
-- guard sends endings through the status), so this bypasses the triggers; superuser only.
CREATE FUNCTION regress.backdate(key_id uuid, ago interval) RETURNS void
LANGUAGE sql
SET session_replication_role = replica
AS $$
    UPDATE api_keys.keys SET expires_at = statement_timestamp() - ago WHERE id = key_id
$$;
REVOKE ALL ON FUNCTION regress.backdate(uuid, interval) FROM PUBLIC;
