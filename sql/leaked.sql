-- Leaked keys: what a secret scanner found revokes the keys it contains.

-- Revokes each presented string that is a key issued here (not yet revoked), with
-- reason 'leaked: <source>' (audited, and sent as a change event like any revocation);
-- returns their prefixes. Anything else (no key, another installation's key, a wrong
-- secret, NULL) is ignored without a word: a scanner's findings are mostly noise.
-- Spaces, tabs and line ends around a string are not part of it. At most 1000 strings
-- per call, each costing at most one argon2 computation.
CREATE FUNCTION api_keys._impl_api_key_report_leaked(keys text[], source text)
RETURNS SETOF text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found uuid[];
    held text[];
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
    PERFORM api_keys._check_length('source', source, 200);
    found := ARRAY(SELECT DISTINCT a
                     FROM (SELECT DISTINCT btrim(p, E' \t\r\n') AS p
                             FROM unnest(keys) p WHERE p IS NOT NULL) presented,
                          LATERAL api_keys._authentic_key(textsend(presented.p)) a
                    WHERE a IS NOT NULL);
    -- Never waits: a key whose row another transaction holds (its owner editing it,
    -- say) must not hold up the revocation of the others. It is named in a WARNING, to
    -- be reported again.
    FOR k IN SELECT * FROM api_keys.keys
              WHERE id = ANY (found) AND status <> 'revoked'
              ORDER BY prefix
                FOR UPDATE SKIP LOCKED
    LOOP
        UPDATE api_keys.keys SET status = 'revoked', status_reason = 'leaked: ' || btrim(source)
         WHERE id = k.id;
        RETURN NEXT k.prefix;
    END LOOP;
    held := ARRAY(SELECT prefix FROM api_keys.keys
                   WHERE id = ANY (found) AND status <> 'revoked' ORDER BY prefix);
    IF held <> '{}' THEN
        RAISE WARNING '% reported key(s) not revoked: another transaction holds them', cardinality(held)
            USING DETAIL = 'Held: ' || array_to_string(held, ', ') || '.',
                  HINT = 'Report them again once that transaction has ended.';
    END IF;
END $$;

CREATE FUNCTION api_keys.api_key_report_leaked(keys text[], source text)
RETURNS SETOF text
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'api_keys_as_caller';

COMMENT ON FUNCTION api_keys.api_key_report_leaked(text[], text) IS
    'Revokes each presented string that is a key issued here (reason ''leaked: <source>''); returns their prefixes.';
