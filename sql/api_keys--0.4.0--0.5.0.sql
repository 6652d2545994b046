-- api_keys 0.4.0 -> 0.5.0: signed keys (issue 14).
-- * Every key issued carries a MAC under a server signing key (api_keys.signing_keys,
--   superusers only, dumped); verification checks it before any table, so a forged
--   secret never reaches argon2, a budget or a rate window. This update creates the
--   database's first signing key.
-- * api_keys.rotate_signing_key() (admin) starts a new one; older ones keep verifying.
-- * keys.signing_key names the signing key of each key; keys issued before this update
--   have none and keep verifying as before until rotated.
-- CREATE OR REPLACE keeps every existing function's oid, privileges and comment.

ALTER TABLE api_keys.keys ADD COLUMN signing_key text
    CHECK (signing_key ~ '^[0-9A-Za-z]{4}$');

COMMENT ON TABLE api_keys.usage IS
    'Verifications per key per hour: verified (valid) and rejected (the key was found but the call failed a check; forgeries are not counted). Kept current within api_keys.flush_interval.';

ALTER TABLE api_keys.audit_log DROP CONSTRAINT audit_log_action_check;
ALTER TABLE api_keys.audit_log ADD CONSTRAINT audit_log_action_check
    CHECK (action IN ('issued', 'updated', 'suspended', 'reactivated',
                      'revoked', 'expired', 'rotated', 'deleted',
                      'signing_key_rotated'));

CREATE TABLE api_keys.signing_keys (
    id         text NOT NULL CHECK (id ~ '^[0-9A-Za-z]{4}$'),
    secret     bytea NOT NULL CHECK (pg_catalog.octet_length(secret) = 32),
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);

CREATE UNIQUE INDEX signing_keys_id_secret_key
    ON api_keys.signing_keys (id, pg_catalog.sha256(secret));

COMMENT ON TABLE api_keys.signing_keys IS
    'Server signing keys (secret: 32 bytes for HMAC-SHA-256). The newest signs new keys; all verify. Superusers only.';

CREATE FUNCTION api_keys."_new_signing_key_id"() RETURNS TEXT
STRICT VOLATILE
LANGUAGE c
AS 'MODULE_PATHNAME', '_new_signing_key_id_wrapper';

CREATE FUNCTION api_keys."_new_signing_secret"() RETURNS bytea
STRICT VOLATILE
LANGUAGE c
AS 'MODULE_PATHNAME', '_new_signing_secret_wrapper';

CREATE FUNCTION api_keys._signing_keys_changed() RETURNS trigger
LANGUAGE c
AS 'MODULE_PATHNAME', '_signing_keys_changed';

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
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'rotate_signing_key() runs only at READ COMMITTED, not %',
                        upper(current_setting('transaction_isolation'))
            USING ERRCODE = 'invalid_transaction_state',
                  HINT = 'Run it in a transaction at READ COMMITTED: BEGIN ISOLATION LEVEL READ COMMITTED.';
    END IF;
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

-- Keys are minted signed; the unsigned _mint_key is gone.
CREATE FUNCTION api_keys."_mint_signed_key"(
	"environment" TEXT
) RETURNS TABLE (
	"prefix" TEXT,
	"key" TEXT,
	"secret_hash" TEXT,
	"signing_key" TEXT
)
STRICT VOLATILE
LANGUAGE c
AS 'MODULE_PATHNAME', '_mint_signed_key_wrapper';

CREATE OR REPLACE FUNCTION api_keys._create_key(t api_keys.keys)
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

DROP FUNCTION api_keys._mint_key(text);

CREATE OR REPLACE FUNCTION api_keys._keys_guard() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF (NEW.id, NEW.prefix, NEW.secret_hash, NEW.created_at, NEW.created_by,
        NEW.key_type, NEW.environment, NEW.rotated_from, NEW.signing_key)
       IS DISTINCT FROM
       (OLD.id, OLD.prefix, OLD.secret_hash, OLD.created_at, OLD.created_by,
        OLD.key_type, OLD.environment, OLD.rotated_from, OLD.signing_key) THEN
        RAISE EXCEPTION 'id, prefix, secret_hash, created_at, created_by, key_type, environment, rotated_from and signing_key of key % cannot be changed', OLD.prefix
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

-- Privileges, as sql/grants.sql gives them.
REVOKE ALL ON api_keys.signing_keys FROM PUBLIC;
REVOKE ALL ON FUNCTION api_keys._new_signing_key_id(), api_keys._new_signing_secret(),
                       api_keys._signing_keys_changed(), api_keys._create_signing_key(),
                       api_keys._impl_rotate_signing_key(), api_keys.rotate_signing_key(),
                       api_keys._mint_signed_key(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api_keys.rotate_signing_key() TO api_keys_admin;
GRANT SELECT (id, created_at) ON api_keys.signing_keys TO api_keys_admin;
GRANT SELECT (signing_key) ON api_keys.keys TO api_keys_admin;
SELECT pg_catalog.pg_extension_config_dump('api_keys.signing_keys', '');
