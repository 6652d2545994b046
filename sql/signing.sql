-- Server signing keys. Every key issued carries a MAC made with the newest signing key
-- (src/core/key/signature.rs), so verification refuses a forged secret for the price
-- of one HMAC: no key row, no argon2, no budget, no rate window. Keys signed with older
-- signing keys keep verifying; README ("Signed keys") says how to retire one.

-- Verifying backends keep the signing keys in memory (src/postgres/signing_keys.rs):
-- every change reaches them, and hot standbys, at commit.
CREATE TRIGGER signing_keys_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON api_keys.signing_keys
    FOR EACH STATEMENT EXECUTE FUNCTION api_keys._signing_keys_changed();
-- Also under session_replication_role = replica (logical replication's apply worker, a
-- superuser's bulk load): a signing key deleted so must be forgotten like any other.
ALTER TABLE api_keys.signing_keys ENABLE ALWAYS TRIGGER signing_keys_changed;

-- A new signing key with an id unused in this database. A database holds at most 1,000
-- (each verifying backend reads them all after a change).
CREATE FUNCTION api_keys._create_signing_key()
RETURNS TABLE (id text, created_at timestamptz)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    new_id text;
BEGIN
    -- One at a time, so that two never pick the same id. Verification only reads the
    -- table (ACCESS SHARE), which this mode lets through.
    LOCK TABLE api_keys.signing_keys IN SHARE ROW EXCLUSIVE MODE;
    IF (SELECT count(*) FROM api_keys.signing_keys) >= 1000 THEN
        RAISE EXCEPTION 'api_keys already has 1000 signing keys'
            USING ERRCODE = 'program_limit_exceeded',
                  HINT = 'Retire old signing keys first (README, "Signed keys").';
    END IF;
    LOOP
        new_id := api_keys._new_signing_key_id();
        EXIT WHEN NOT EXISTS (SELECT FROM api_keys.signing_keys s
                               WHERE s.id OPERATOR(pg_catalog.=) new_id);
    END LOOP;
    -- The newest signs: dated by the clock, not the transaction's start (two rotations
    -- in one transaction), and always after every other (a clock set back).
    RETURN QUERY
    INSERT INTO api_keys.signing_keys AS s (id, secret, created_at)
    VALUES (new_id, api_keys._new_signing_secret(),
            greatest(clock_timestamp(),
                     (SELECT max(o.created_at) + interval '1 microsecond'
                        FROM api_keys.signing_keys o)))
    RETURNING s.id, s.created_at;
END $$;

-- The signing key every database starts with.
SELECT FROM api_keys._create_signing_key();

-- rotate_signing_key(): new keys are signed with a new signing key from now on; keys
-- signed with older ones keep verifying. Audited.
CREATE FUNCTION api_keys._impl_rotate_signing_key()
RETURNS TABLE (id text, created_at timestamptz)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    created record;
BEGIN
    -- The checks after the table's lock (the cap, an unused id) must see every
    -- rotation committed before it: a snapshot taken earlier would not.
    PERFORM api_keys._require_read_committed('rotate_signing_key()');
    SELECT * INTO STRICT created FROM api_keys._create_signing_key();
    -- An entry of no key (key_id and prefix NULL).
    PERFORM api_keys._audit('signing_key_rotated', NULL::api_keys.keys, NULL, NULL, NULL,
                            jsonb_build_object('signing_key', created.id));
    RETURN QUERY SELECT created.id, created.created_at;
END $$;

CREATE FUNCTION api_keys.rotate_signing_key()
RETURNS TABLE (id text, created_at timestamptz)
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'api_keys_as_caller';

COMMENT ON FUNCTION api_keys.rotate_signing_key() IS
    'Start a new signing key for new keys; keys signed with older ones keep verifying.';
