-- api_keys 0.4.0 -> 0.5.0: signed keys (issue 14), usage from standbys (issue 16).
-- * Every key issued carries a MAC under a server signing key (api_keys.signing_keys,
--   superusers only, dumped); verification checks it before any table, so a forged
--   secret never reaches argon2, a budget or a rate window. This update creates the
--   database's first signing key.
-- * api_keys.rotate_signing_key() (admin) starts a new one; older ones keep verifying.
-- * keys.signing_key names the signing key of each key; keys issued before this update
--   have none and keep verifying as before until rotated.
-- * api_keys.usage counts per server (source) with a write tick; standbys send theirs to
--   the primary through api_keys._merge_usage (role api_keys_standby); usage_by_key sums
--   over servers.
-- CREATE OR REPLACE keeps every existing function's oid, privileges and comment.

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
REVOKE ALL ON FUNCTION api_keys._require_read_committed(text) FROM PUBLIC;

ALTER TABLE api_keys.keys ADD COLUMN signing_key text
    CHECK (signing_key ~ '^[0-9A-Za-z]{4}$');


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

-- Usage per server (issue 16). Rows counted before this update keep the nil source.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'api_keys_standby') THEN
        CREATE ROLE api_keys_standby NOLOGIN;
    END IF;
END
$roles$;

ALTER TABLE api_keys.usage
    ADD COLUMN source uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000',
    ADD COLUMN tick bigint NOT NULL DEFAULT 0,
    DROP CONSTRAINT usage_pkey,
    ADD PRIMARY KEY (key_id, hour, source);
DROP INDEX api_keys.usage_hour_idx;
CREATE INDEX usage_hour_tick_idx ON api_keys.usage (hour, tick);

COMMENT ON TABLE api_keys.usage IS
    'Verifications per key per hour and per server that counted them (source; the nil uuid: before 0.5.0): verified (valid) and rejected (the key was found but the call failed a check; forgeries are not counted). Kept current within api_keys.flush_interval; standbys send theirs to the primary.';
COMMENT ON COLUMN api_keys.usage.source IS
    'The server run that counted these calls: a primary, a standby, or one of them before a crash. Each writes its own totals, so a total sent twice counts once.';
COMMENT ON COLUMN api_keys.usage.tick IS
    'The api_keys.usage_clock tick of the write that last changed the row: servers read other servers'' new counts from the ticks they have not seen.';

-- One row: the tick of the last usage write. Every write takes the next one with the
-- row locked until it commits, so ticks become visible in order (on standbys too) and
-- a reader that has seen tick n has seen every row written up to n. Not dumped: a
-- restored database counts on from 0 (readers compare with this row, not with rows).
CREATE TABLE api_keys.usage_clock (
    one  boolean PRIMARY KEY DEFAULT true CHECK (one),
    tick bigint NOT NULL DEFAULT 0
);
INSERT INTO api_keys.usage_clock DEFAULT VALUES;

CREATE OR REPLACE VIEW api_keys.usage_by_key WITH (security_barrier) AS
SELECT u.key_id, l.prefix, l.name, l.owner, u.hour,
       pg_catalog.sum(u.verified)::bigint AS verified,
       pg_catalog.sum(u.rejected)::bigint AS rejected
  FROM api_keys.usage u
  JOIN api_keys.key_list l ON l.id OPERATOR(pg_catalog.=) u.key_id
 GROUP BY u.key_id, l.prefix, l.name, l.owner, u.hour;

CREATE FUNCTION api_keys._merge_usage(
    system     bigint,
    source     uuid,
    key_ids    uuid[],
    hours      timestamptz[],
    verified   bigint[],
    rejected   bigint[],
    last_ids   uuid[],
    last_at    timestamptz[],
    last_ip    inet[]
) RETURNS TABLE (key_id uuid, gone boolean)
LANGUAGE plpgsql SECURITY DEFINER
-- Writing last use is no edit for keys_guard to judge nor keys_audit to record.
SET session_replication_role = replica
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    counts   integer := coalesce(cardinality(key_ids), 0);
    uses     integer := coalesce(cardinality(last_ids), 0);
    now_tick bigint;
BEGIN
    -- A standby pointed at another cluster would hear its keys are gone.
    IF system IS DISTINCT FROM (SELECT s.system_identifier FROM pg_control_system() s) THEN
        RAISE EXCEPTION 'this server is not the primary of the server sending usage: their system identifiers differ'
            USING ERRCODE = '22023',
                  HINT = 'Point api_keys.primary_conninfo at the primary the standby replicates.';
    END IF;
    IF source IS NULL OR source = '00000000-0000-0000-0000-000000000000'::uuid THEN
        RAISE EXCEPTION 'source must be a server''s usage source, not NULL or the nil uuid'
            USING ERRCODE = '22023', HINT = 'Only api_keys workers call this function.';
    END IF;
    IF counts > 20000 OR uses > 10000 THEN
        RAISE EXCEPTION 'too many counts in one call: % key-hours and % last uses', counts, uses
            USING ERRCODE = '22023', HINT = 'At most 20000 key-hours and 10000 last uses a call.';
    END IF;
    IF coalesce(cardinality(hours), 0) <> counts OR coalesce(cardinality(verified), 0) <> counts
       OR coalesce(cardinality(rejected), 0) <> counts
       OR coalesce(cardinality(last_at), 0) <> uses OR coalesce(cardinality(last_ip), 0) <> uses THEN
        RAISE EXCEPTION 'the arrays of counts, and of last uses, must have the same lengths'
            USING ERRCODE = '22023', HINT = 'Only api_keys workers call this function.';
    END IF;
    IF EXISTS (SELECT FROM unnest(key_ids, hours, verified, rejected) AS c(k, h, v, r)
                WHERE k IS NULL OR h IS NULL OR v IS NULL OR r IS NULL
                   OR v NOT BETWEEN 0 AND 4294967295 OR r NOT BETWEEN 0 AND 4294967295
                   OR NOT isfinite(h) OR date_trunc('hour', h, 'UTC') <> h
                   OR h < date_trunc('hour', now(), 'UTC') - interval '3 hours'
                   OR h > now() + interval '1 hour')
       OR EXISTS (SELECT FROM unnest(last_ids, last_at) AS u(k, a)
                   WHERE k IS NULL OR a IS NULL OR NOT isfinite(a)) THEN
        RAISE EXCEPTION 'counts need a key, a whole UTC hour of the last three and counts from 0 to 4294967295; last uses a key and a finite time'
            USING ERRCODE = '22023', HINT = 'Only api_keys workers call this function.';
    END IF;
    -- The next tick, this row locked until commit: writes become visible in tick order.
    UPDATE api_keys.usage_clock SET tick = usage_clock.tick + 1 RETURNING usage_clock.tick INTO now_tick;

    RETURN QUERY
    WITH batch AS (
        SELECT c.k AS key_id, c.h AS hour, c.v AS verified, c.r AS rejected
          FROM unnest(key_ids, hours, verified, rejected) AS c(k, h, v, r)
    ), used AS (
        -- The latest use of each key; none later than now (a clock ahead of this one).
        SELECT DISTINCT ON (u.k) u.k AS key_id, least(u.a, now()) AS at, u.ip
          FROM unnest(last_ids, last_at, last_ip) AS u(k, a, ip)
         ORDER BY u.k, u.a DESC
    ), wanted AS (
        SELECT b.key_id FROM batch b UNION SELECT u.key_id FROM used u
    ), locked AS (
        -- Keys whose row no user has locked; the others are sent again next round.
        SELECT k.id FROM api_keys.keys k
         WHERE k.id IN (SELECT w.key_id FROM wanted w)
           FOR NO KEY UPDATE OF k SKIP LOCKED
    ), counted AS (
        INSERT INTO api_keys.usage AS u (key_id, hour, source, verified, rejected, tick)
        SELECT b.key_id, b.hour, _merge_usage.source, b.verified, b.rejected, now_tick
          FROM batch b
         WHERE b.key_id IN (SELECT l.id FROM locked l)
        ON CONFLICT ON CONSTRAINT usage_pkey DO UPDATE
           SET verified = greatest(u.verified, EXCLUDED.verified),
               rejected = greatest(u.rejected, EXCLUDED.rejected),
               tick = EXCLUDED.tick
         WHERE u.verified < EXCLUDED.verified OR u.rejected < EXCLUDED.rejected
    ), touched AS (
        UPDATE api_keys.keys k
           SET last_used_at = l.at, last_used_ip = l.ip
          FROM used l
         WHERE k.id = l.key_id
           AND k.id IN (SELECT x.id FROM locked x)
           AND (k.last_used_at IS NULL OR k.last_used_at < l.at)
    )
    SELECT w.key_id, k.id IS NULL
      FROM wanted w LEFT JOIN api_keys.keys k ON k.id = w.key_id
     WHERE k.id IS NULL OR k.id NOT IN (SELECT x.id FROM locked x);
END
$$;

COMMENT ON FUNCTION api_keys._merge_usage(bigint, uuid, uuid[], timestamptz[], bigint[], bigint[], uuid[], timestamptz[], inet[]) IS
    'Workers only: write one server''s usage totals (system: the cluster''s system identifier, checked) (the larger total wins) and last uses; returns the keys left out: locked by a user (gone false, sent again) or with no row (gone true).';

REVOKE ALL ON api_keys.usage_clock FROM PUBLIC;
REVOKE ALL ON FUNCTION api_keys._merge_usage(bigint, uuid, uuid[], timestamptz[], bigint[], bigint[],
                                             uuid[], timestamptz[], inet[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api_keys._merge_usage(bigint, uuid, uuid[], timestamptz[], bigint[], bigint[],
                                                uuid[], timestamptz[], inet[]) TO api_keys_standby;

-- Issue 17: change events, keys named by prefix, leaked-key reports.

-- One audit entry. Status changes, rotations and deletions are also sent, at commit,
-- as a NOTIFY on channel `api_keys` (unless api_keys.change_events is off): JSON with
-- the audit entry's id, the action, key id, prefix, old and new status (and a
-- rotation's new key). Any role of the database may LISTEN, so nothing more: no owner,
-- name, reason, secret or hash.
CREATE OR REPLACE FUNCTION api_keys._audit(
    action text, k api_keys.keys, old_status api_keys.key_status,
    new_status api_keys.key_status, reason text, details jsonb
) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    entry bigint;
BEGIN
    INSERT INTO api_keys.audit_log (key_id, prefix, action, actor, app_actor,
                                    old_status, new_status, reason, details)
    VALUES (k.id, k.prefix, action, api_keys._caller(),
            nullif(current_setting('api_keys.actor', true), ''),
            old_status, new_status, reason, coalesce(details, '{}'))
    RETURNING id INTO entry;
    IF action NOT IN ('suspended', 'reactivated', 'revoked', 'expired', 'rotated', 'deleted')
       OR NOT coalesce(current_setting('api_keys.change_events', true), 'on')::boolean THEN
        RETURN;
    END IF;
    -- A full notification queue fails every transaction that sent a NOTIFY, at commit,
    -- and any role can fill it (a listener left in an open transaction while others
    -- notify). Past half full the event is left out, so that a flood would have to fill
    -- the other half (4 GB) between a change and its commit to hold up a revocation;
    -- the audit log has the change all the same.
    IF pg_notification_queue_usage() >= 0.5 THEN
        RAISE WARNING 'no change event sent for key %: the notification queue is over half full', k.prefix
            USING HINT = format('The change is in api_keys.audit_log (entry %s). A session that listens on some channel is holding the queue in a long transaction.', entry);
        RETURN;
    END IF;
    -- The audit entry's id makes every event distinct (PostgreSQL delivers identical
    -- payloads of one transaction once), and says where to read more.
    PERFORM pg_notify('api_keys', (jsonb_build_object(
                'audit_id', entry, 'action', action, 'key_id', k.id, 'prefix', k.prefix,
                'old_status', old_status, 'new_status', new_status)
            || CASE WHEN action = 'rotated'
                    THEN jsonb_build_object('new_key_id', details -> 'new_key_id',
                                            'new_prefix', details -> 'new_prefix')
                    ELSE '{}' END)::text);
END
$$;

CREATE FUNCTION api_keys._prefix_pattern() RETURNS text
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_prefix_pattern_wrapper';

CREATE FUNCTION api_keys._authentic_key(key bytea) RETURNS uuid
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_authentic_key_wrapper';

-- Keys named by prefix: every lifecycle function that takes a key's id also takes its
-- prefix (`ak_live_…`, as listings show it). Each overload takes `key_id text`, so a
-- quoted literal, id or prefix, resolves to it (PostgreSQL prefers text for an untyped
-- literal) and a uuid value to the uuid version; each is an entry point like the uuid
-- one, and its implementation names the key with _key_ref and calls the uuid one.

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
            -- with a space, say). PostgreSQL logs the text of a statement that fails;
            -- not this one, whatever fails later in this call (the setting ends with
            -- the call, or with the transaction an error aborts).
            PERFORM set_config('log_min_error_statement', 'panic', true);
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
AS $$ SELECT api_keys._impl_api_key_suspend(api_keys._key_ref(key_id), reason) $$;

CREATE FUNCTION api_keys.api_key_suspend(key_id text, reason text DEFAULT NULL)
RETURNS api_keys.key_list
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'api_keys_as_caller';

CREATE FUNCTION api_keys._impl_api_key_reactivate(key_id text)
RETURNS api_keys.key_list
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT api_keys._impl_api_key_reactivate(api_keys._key_ref(key_id)) $$;

CREATE FUNCTION api_keys.api_key_reactivate(key_id text)
RETURNS api_keys.key_list
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'api_keys_as_caller';

CREATE FUNCTION api_keys._impl_api_key_revoke(key_id text, reason text)
RETURNS api_keys.key_list
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT api_keys._impl_api_key_revoke(api_keys._key_ref(key_id), reason) $$;

CREATE FUNCTION api_keys.api_key_revoke(key_id text, reason text)
RETURNS api_keys.key_list
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'api_keys_as_caller';

CREATE FUNCTION api_keys._impl_api_key_set_status(key_id text, status api_keys.key_status, reason text)
RETURNS api_keys.key_list
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT api_keys._impl_api_key_set_status(api_keys._key_ref(key_id), status, reason) $$;

CREATE FUNCTION api_keys.api_key_set_status(key_id text, status api_keys.key_status, reason text DEFAULT NULL)
RETURNS api_keys.key_list
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'api_keys_as_caller';

CREATE FUNCTION api_keys._impl_api_key_delete(key_id text)
RETURNS api_keys.key_list
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT api_keys._impl_api_key_delete(api_keys._key_ref(key_id)) $$;

CREATE FUNCTION api_keys.api_key_delete(key_id text)
RETURNS api_keys.key_list
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'api_keys_as_caller';

CREATE FUNCTION api_keys._impl_api_key_rotate(key_id text, grace interval)
RETURNS TABLE (id uuid, key text, prefix text, expires_at timestamptz)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM api_keys._impl_api_key_rotate(api_keys._key_ref(key_id), grace) $$;

CREATE FUNCTION api_keys.api_key_rotate(key_id text, grace interval DEFAULT '0')
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
    metadata jsonb
) RETURNS api_keys.key_list
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT api_keys._impl_api_key_update(api_keys._key_ref(key_id), name, description, scopes,
                                         allowed_cidrs, expires_at, rate_limit_per_minute,
                                         rate_limit_per_hour, metadata)
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
    metadata jsonb DEFAULT NULL
) RETURNS api_keys.key_list
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'api_keys_as_caller';

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
AS $$
DECLARE
    presented text[];
    found uuid[];
    revoked text[] := '{}';
    waited text[] := '{}';
    held uuid[];
    k api_keys.keys;
BEGIN
    -- The arguments are keys: PostgreSQL logs the text of a statement that fails, but
    -- not this one (the setting ends with the call, or with the transaction an error
    -- aborts).
    PERFORM set_config('log_min_error_statement', 'panic', true);
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
            PERFORM set_config('lock_timeout', '2s', true);
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
    'Revokes each presented string that is a key issued here (reason ''leaked: <source>''); returns their prefixes.';

REVOKE ALL ON FUNCTION api_keys._prefix_pattern(), api_keys._authentic_key(bytea),
                       api_keys._key_ref(text),
                       api_keys._impl_api_key_suspend(text, text),
                       api_keys.api_key_suspend(text, text),
                       api_keys._impl_api_key_reactivate(text),
                       api_keys.api_key_reactivate(text),
                       api_keys._impl_api_key_revoke(text, text),
                       api_keys.api_key_revoke(text, text),
                       api_keys._impl_api_key_set_status(text, api_keys.key_status, text),
                       api_keys.api_key_set_status(text, api_keys.key_status, text),
                       api_keys._impl_api_key_delete(text),
                       api_keys.api_key_delete(text),
                       api_keys._impl_api_key_rotate(text, interval),
                       api_keys.api_key_rotate(text, interval),
                       api_keys._impl_api_key_update(text, text, text, text[], cidr[], timestamptz, integer, integer, jsonb),
                       api_keys.api_key_update(text, text, text, text[], cidr[], timestamptz, integer, integer, jsonb),
                       api_keys._impl_api_key_report_leaked(text[], text),
                       api_keys.api_key_report_leaked(text[], text)
  FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    api_keys.api_key_suspend(text, text),
    api_keys.api_key_reactivate(text),
    api_keys.api_key_revoke(text, text),
    api_keys.api_key_set_status(text, api_keys.key_status, text),
    api_keys.api_key_delete(text),
    api_keys.api_key_rotate(text, interval),
    api_keys.api_key_update(text, text, text, text[], cidr[], timestamptz, integer, integer, jsonb)
TO PUBLIC;
GRANT EXECUTE ON FUNCTION api_keys.api_key_report_leaked(text[], text) TO api_keys_admin;
-- A database where EXECUTE on a lifecycle function was revoked (or granted) keeps that
-- for naming keys by prefix too: each new version takes its uuid version's privileges.
DO $$
DECLARE
    pair record;
    grantee text;
BEGIN
    FOR pair IN
        SELECT u.oid AS uuid_version, t.oid::regprocedure AS text_version
          FROM pg_catalog.pg_proc u
          JOIN pg_catalog.pg_proc t ON t.proname = u.proname AND t.pronamespace = u.pronamespace
         WHERE u.pronamespace = 'api_keys'::regnamespace
           AND u.proname IN ('api_key_suspend', 'api_key_reactivate', 'api_key_revoke',
                             'api_key_set_status', 'api_key_delete', 'api_key_rotate',
                             'api_key_update')
           AND u.proargtypes[0] = 'uuid'::regtype AND t.proargtypes[0] = 'text'::regtype
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', pair.text_version);
        FOR grantee IN
            SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
                   || CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END
              FROM pg_catalog.pg_proc p,
                   pg_catalog.aclexplode(coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner)))
                       WITH ORDINALITY AS a(grantor, grantee, privilege_type, is_grantable, ordinality)
             WHERE p.oid = pair.uuid_version AND a.privilege_type = 'EXECUTE'
             ORDER BY a.ordinality
        LOOP
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %s', pair.text_version, grantee);
        END LOOP;
        -- pg_dump writes a member's privileges as changes from its initial ones, which
        -- these GRANTs would otherwise become: start the new version from where its
        -- uuid version started, so a dump carries the database's changes to both.
        UPDATE pg_catalog.pg_init_privs t
           SET initprivs = u.initprivs
          FROM pg_catalog.pg_init_privs u
         WHERE t.objoid = pair.text_version::oid AND t.classoid = 'pg_catalog.pg_proc'::regclass
           AND t.objsubid = 0
           AND u.objoid = pair.uuid_version AND u.classoid = 'pg_catalog.pg_proc'::regclass
           AND u.objsubid = 0;
    END LOOP;
END
$$;

-- Admins read stats(), and the audit log's sequence, which pg_dump reads with the log.
GRANT EXECUTE ON FUNCTION api_keys.stats() TO api_keys_admin;
GRANT SELECT ON api_keys.audit_log_id_seq TO api_keys_admin;

-- The audit entries of the keys the caller may see (for owners and the command line).
CREATE VIEW api_keys.key_audit WITH (security_barrier) AS
SELECT a.id, a.at, a.key_id, a.prefix, a.action, a.actor, a.app_actor,
       a.old_status, a.new_status, a.reason, a.details
  FROM api_keys.audit_log a
 WHERE (SELECT api_keys._caller_is_admin())
    OR a.key_id IN (SELECT l.id FROM api_keys.key_list l);

COMMENT ON VIEW api_keys.key_audit IS
    'The audit entries of the keys the caller may see (admins: all of them).';
REVOKE ALL ON api_keys.key_audit FROM PUBLIC;
GRANT SELECT ON api_keys.key_audit TO PUBLIC;
