-- Leaked keys: what a secret scanner found revokes the keys it contains.

-- Revokes each key issued here (not yet revoked) found in the presented strings, with
-- reason 'leaked: <source>' (audited, and sent as a change event like any revocation);
-- returns their prefixes. Anything else (no key, another installation's key, a wrong
-- secret, NULL) is ignored without a word: a scanner's findings are mostly noise.
-- At most 1000 strings per call, each key found costing at most one argon2
-- computation.
CREATE FUNCTION api_keys._impl_api_key_report_leaked(keys text[], source text)
RETURNS SETOF text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- The arguments are keys: PostgreSQL logs the text of a statement that fails, but not
-- during this call. Held keys get a short wait (below). Both settings end with the call.
SET log_min_error_statement = panic
SET lock_timeout = '2s'
AS $$
DECLARE
    presented text[];
    found uuid[];
    revoked text[] := '{}';
    waited text[] := '{}';
    held uuid[];
    k api_keys.keys;
BEGIN
    IF keys IS NULL THEN
        RAISE EXCEPTION 'keys must not be NULL' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Pass the strings a secret scanner found, as a text array.';
    ELSIF cardinality(keys) > 1000 THEN
        RAISE EXCEPTION 'at most 1000 keys per call (got %)', cardinality(keys)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'api_keys limits a report to 1000 keys; split it into several calls.';
    ELSIF source IS NULL OR btrim(source) = '' THEN
        RAISE EXCEPTION 'source is required' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Say where the keys were found, e.g. ''github secret scanning''; it becomes the revocation reason.';
    END IF;
    -- A key its owner or the worker changes meanwhile would fail a report at a higher
    -- level with a serialization error.
    PERFORM api_keys._require_read_committed('api_key_report_leaked()');
    PERFORM api_keys._check_length('source', source, 200);
    -- Every key in the first 4 KiB of each string (scanner lines quote keys, or put
    -- them after `token=`): at most 1000 in all, counted before any is hashed.
    presented := ARRAY(SELECT DISTINCT m[1]
                         FROM unnest(keys) p,
                              regexp_matches(left(p, 4096), '(' || api_keys.key_pattern() || ')', 'g') m
                        WHERE p IS NOT NULL);
    IF cardinality(presented) > 1000 THEN
        RAISE EXCEPTION 'at most 1000 keys per call (found %)', cardinality(presented)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'api_keys limits a report to 1000 keys; split it into several calls.';
    END IF;
    found := ARRAY(SELECT DISTINCT a
                     FROM unnest(presented) s, LATERAL api_keys._authentic_key(textsend(s)) a
                    WHERE a IS NOT NULL);
    -- First without waiting: a key whose row another transaction holds must not hold
    -- up the revocation of the others.
    FOR k IN SELECT * FROM api_keys.keys
              WHERE id = ANY (found) AND status <> 'revoked'
              ORDER BY prefix
                FOR UPDATE SKIP LOCKED
    LOOP
        UPDATE api_keys.keys SET status = 'revoked', status_reason = 'leaked: ' || btrim(source)
         WHERE id = k.id;
        revoked := revoked || k.prefix;
    END LOOP;
    -- Then a short wait for the held ones: most locks are brief (a worker's flush, an
    -- owner's edit). Past it, they are named in a WARNING, to be reported again.
    held := ARRAY(SELECT id FROM api_keys.keys WHERE id = ANY (found) AND status <> 'revoked');
    IF held <> '{}' THEN
        BEGIN
            FOR k IN SELECT * FROM api_keys.keys
                      WHERE id = ANY (held) AND status <> 'revoked'
                      ORDER BY prefix
                        FOR UPDATE
            LOOP
                UPDATE api_keys.keys SET status = 'revoked', status_reason = 'leaked: ' || btrim(source)
                 WHERE id = k.id;
                waited := waited || k.prefix;
            END LOOP;
        EXCEPTION WHEN lock_not_available THEN
            waited := '{}';
        END;
        revoked := revoked || waited;
        waited := ARRAY(SELECT prefix FROM api_keys.keys
                         WHERE id = ANY (held) AND status <> 'revoked' ORDER BY prefix);
        IF waited <> '{}' THEN
            RAISE WARNING '% reported key(s) not revoked: another transaction holds them', cardinality(waited)
                USING DETAIL = 'Held: ' || array_to_string(waited, ', ') || '.',
                      HINT = 'Report them again once that transaction has ended.';
        END IF;
    END IF;
    RETURN QUERY SELECT r FROM unnest(revoked) r ORDER BY r;
END $$;

CREATE FUNCTION api_keys.api_key_report_leaked(keys text[], source text)
RETURNS SETOF text
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'api_keys_as_caller';

COMMENT ON FUNCTION api_keys.api_key_report_leaked(text[], text) IS
    'Revokes each key issued here found in the presented strings (reason ''leaked: <source>''); returns their prefixes.';
