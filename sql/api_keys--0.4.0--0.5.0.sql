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
-- * Metering (issue 18): credits on keys (remaining_uses, with a daily or monthly
--   refill; api_key_set_credits), owner-wide rate limits (api_keys.owner_limits,
--   api_key_set_owner_limits, admins; copied into each key), usage counted per outcome,
--   and the uses spent per credit period (api_keys.credit_use).
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
                      'signing_key_rotated', 'owner_limits_changed'));

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
    system        bigint,
    source        uuid,
    key_ids       uuid[],
    hours         timestamptz[],
    verified      bigint[],
    rejected      bigint[],
    outcomes      bigint[],
    last_ids      uuid[],
    last_at       timestamptz[],
    last_ip       inet[],
    spent_ids     uuid[],
    spent_periods timestamptz[],
    spent_since   bigint[],
    spent         bigint[]
) RETURNS TABLE (key_id uuid, gone boolean)
LANGUAGE plpgsql SECURITY DEFINER
-- Writing last use and spending is no edit for keys_guard to judge nor keys_audit to
-- record.
SET session_replication_role = replica
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    counts   integer := coalesce(cardinality(key_ids), 0);
    uses     integer := coalesce(cardinality(last_ids), 0);
    credits  integer := coalesce(cardinality(spent_ids), 0);
    now_tick bigint;
    got      uuid[];
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
    IF counts > 20000 OR uses > 10000 OR credits > 10000 THEN
        RAISE EXCEPTION 'too many counts in one call: % key-hours, % last uses and % credit counts', counts, uses, credits
            USING ERRCODE = '22023', HINT = 'At most 20000 key-hours, 10000 last uses and 10000 credit counts a call.';
    END IF;
    IF coalesce(cardinality(hours), 0) <> counts OR coalesce(cardinality(verified), 0) <> counts
       OR coalesce(cardinality(rejected), 0) <> counts
       OR coalesce(cardinality(outcomes), 0) <> counts * 8
       OR coalesce(cardinality(last_at), 0) <> uses OR coalesce(cardinality(last_ip), 0) <> uses
       OR coalesce(cardinality(spent_periods), 0) <> credits
       OR coalesce(cardinality(spent_since), 0) <> credits
       OR coalesce(cardinality(spent), 0) <> credits THEN
        RAISE EXCEPTION 'the arrays of counts (and 8 outcomes each), of last uses, and of credit counts must have the same lengths'
            USING ERRCODE = '22023', HINT = 'Only api_keys workers call this function.';
    END IF;
    IF EXISTS (SELECT FROM unnest(key_ids, hours, verified, rejected) AS c(k, h, v, r)
                WHERE k IS NULL OR h IS NULL OR v IS NULL OR r IS NULL
                   OR v NOT BETWEEN 0 AND 4294967295 OR r NOT BETWEEN 0 AND 4294967295
                   OR NOT isfinite(h) OR date_trunc('hour', h, 'UTC') <> h
                   OR h < date_trunc('hour', now(), 'UTC') - interval '3 hours'
                   OR h > now() + interval '1 hour')
       OR EXISTS (SELECT FROM unnest(outcomes) AS o(n) WHERE n IS NULL OR n NOT BETWEEN 0 AND 4294967295)
       OR EXISTS (SELECT FROM unnest(last_ids, last_at) AS u(k, a)
                   WHERE k IS NULL OR a IS NULL OR NOT isfinite(a))
       OR EXISTS (SELECT FROM unnest(spent_ids, spent_periods, spent_since, spent) AS s(k, p, w, n)
                   WHERE k IS NULL OR p IS NULL OR NOT isfinite(p) OR w IS NULL OR n IS NULL OR n < 0) THEN
        RAISE EXCEPTION 'counts need a key, a whole UTC hour of the last three and counts from 0 to 4294967295; last uses a key and a finite time; credit counts a key, a finite period, a writer and a count from 0'
            USING ERRCODE = '22023', HINT = 'Only api_keys workers call this function.';
    END IF;
    -- The next tick, this row locked until commit: writes become visible in tick order.
    UPDATE api_keys.usage_clock SET tick = usage_clock.tick + 1 RETURNING usage_clock.tick INTO now_tick;

    -- Keys whose row no user has locked; the others are sent again next round.
    SELECT array_agg(l.id) INTO got
      FROM (SELECT k.id FROM api_keys.keys k
             WHERE k.id IN (SELECT unnest(key_ids) UNION SELECT unnest(last_ids)
                            UNION SELECT unnest(spent_ids))
               FOR NO KEY UPDATE OF k SKIP LOCKED) l;
    -- A set, not an array to search: each membership test below is hashed.
    got := coalesce(got, '{}');

    WITH batch AS (
        SELECT c.k AS key_id, c.h AS hour, c.v AS verified, c.r AS rejected,
               (c.n - 1) * 8 AS o
          FROM unnest(key_ids, hours, verified, rejected) WITH ORDINALITY AS c(k, h, v, r, n)
    ), counted AS (
        INSERT INTO api_keys.usage AS u (key_id, hour, source, verified, rejected, tick,
                                         rate_limited, usage_exceeded, invalid_secret, suspended,
                                         revoked, expired, ip_not_allowed, insufficient_scope)
        SELECT b.key_id, b.hour, _merge_usage.source, b.verified, b.rejected, now_tick,
               outcomes[b.o + 1], outcomes[b.o + 2], outcomes[b.o + 3], outcomes[b.o + 4],
               outcomes[b.o + 5], outcomes[b.o + 6], outcomes[b.o + 7], outcomes[b.o + 8]
          FROM batch b
         WHERE b.key_id IN (SELECT unnest(got))
        ON CONFLICT ON CONSTRAINT usage_pkey DO UPDATE
           SET verified = greatest(u.verified, EXCLUDED.verified),
               rejected = greatest(u.rejected, EXCLUDED.rejected),
               rate_limited = greatest(u.rate_limited, EXCLUDED.rate_limited),
               usage_exceeded = greatest(u.usage_exceeded, EXCLUDED.usage_exceeded),
               invalid_secret = greatest(u.invalid_secret, EXCLUDED.invalid_secret),
               suspended = greatest(u.suspended, EXCLUDED.suspended),
               revoked = greatest(u.revoked, EXCLUDED.revoked),
               expired = greatest(u.expired, EXCLUDED.expired),
               ip_not_allowed = greatest(u.ip_not_allowed, EXCLUDED.ip_not_allowed),
               insufficient_scope = greatest(u.insufficient_scope, EXCLUDED.insufficient_scope),
               tick = EXCLUDED.tick
         WHERE u.verified < EXCLUDED.verified OR u.rejected < EXCLUDED.rejected
            OR u.rate_limited < EXCLUDED.rate_limited OR u.usage_exceeded < EXCLUDED.usage_exceeded
            OR u.invalid_secret < EXCLUDED.invalid_secret OR u.suspended < EXCLUDED.suspended
            OR u.revoked < EXCLUDED.revoked OR u.expired < EXCLUDED.expired
            OR u.ip_not_allowed < EXCLUDED.ip_not_allowed
            OR u.insufficient_scope < EXCLUDED.insufficient_scope
         RETURNING 1
    )
    INSERT INTO api_keys.credit_use AS c (key_id, period, source, since, spent, tick)
    SELECT s.k, s.p, _merge_usage.source, s.w, s.n, now_tick
      FROM unnest(spent_ids, spent_periods, spent_since, spent) AS s(k, p, w, n)
     WHERE s.k IN (SELECT unnest(got))
    ON CONFLICT ON CONSTRAINT credit_use_pkey DO UPDATE
       SET spent = greatest(c.spent, EXCLUDED.spent), tick = EXCLUDED.tick
     WHERE c.spent < EXCLUDED.spent;

    -- Each key's last use, and the sum of its current credit period over every writer.
    WITH used AS (
        -- The latest use of each key; none later than now (a clock ahead of this one).
        SELECT DISTINCT ON (u.k) u.k AS key_id, least(u.a, now()) AS at, u.ip
          FROM unnest(last_ids, last_at, last_ip) AS u(k, a, ip)
         WHERE u.k IN (SELECT unnest(got))
         ORDER BY u.k, u.a DESC
    ), totals AS (
        SELECT c.key_id, c.period, sum(c.spent)::bigint AS spent
          FROM api_keys.credit_use c
         WHERE (c.key_id, c.period) IN (SELECT s.k, s.p FROM unnest(spent_ids, spent_periods) AS s(k, p)
                                         WHERE s.k IN (SELECT unnest(got)))
         GROUP BY c.key_id, c.period
    ), latest AS (
        SELECT DISTINCT ON (t.key_id) t.key_id, t.period, t.spent
          FROM totals t ORDER BY t.key_id, t.period DESC
    )
    UPDATE api_keys.keys k
       SET last_used_at = CASE WHEN x.newer_use THEN x.at ELSE k.last_used_at END,
           last_used_ip = CASE WHEN x.newer_use THEN x.ip ELSE k.last_used_ip END,
           uses_period = CASE WHEN x.current THEN x.period ELSE k.uses_period END,
           uses_spent = CASE WHEN x.current THEN x.spent ELSE k.uses_spent END
      FROM (SELECT coalesce(l.key_id, t.key_id) AS key_id, l.at, l.ip, t.period, t.spent,
                   l.at IS NOT NULL AND (k2.last_used_at IS NULL OR k2.last_used_at < l.at) AS newer_use,
                   t.period IS NOT NULL AND t.period >= k2.uses_from
                       AND t.period >= coalesce(k2.uses_period, '-infinity') AS current
              FROM used l FULL JOIN latest t ON t.key_id = l.key_id
              JOIN api_keys.keys k2 ON k2.id = coalesce(l.key_id, t.key_id)) x
     WHERE k.id = x.key_id AND (x.newer_use OR x.current);

    -- The spending of periods before a key's current one counts no more: it goes, so
    -- the table holds the current periods only (however often credits are reset).
    DELETE FROM api_keys.credit_use c
     USING api_keys.keys k
     WHERE c.key_id = k.id AND k.id IN (SELECT unnest(got))
       AND c.key_id IN (SELECT unnest(spent_ids))
       AND (k.uses_granted IS NULL
            OR c.period < api_keys._credit_period(k.uses_from, k.refill_interval, now()));

    RETURN QUERY
    WITH wanted AS (
        SELECT unnest(key_ids) AS key_id UNION SELECT unnest(last_ids) UNION SELECT unnest(spent_ids)
    )
    SELECT w.key_id, k.id IS NULL
      FROM wanted w LEFT JOIN api_keys.keys k ON k.id = w.key_id
     WHERE w.key_id NOT IN (SELECT unnest(got));
END
$$;

COMMENT ON FUNCTION api_keys._merge_usage(bigint, uuid, uuid[], timestamptz[], bigint[], bigint[], bigint[], uuid[], timestamptz[], inet[], uuid[], timestamptz[], bigint[], bigint[]) IS
    'Workers only: write one server''s usage totals per outcome (system: the cluster''s system identifier, checked) (the larger total wins), last uses and credit spending; returns the keys left out: locked by a user (gone false, sent again) or with no row (gone true).';

REVOKE ALL ON api_keys.usage_clock FROM PUBLIC;
REVOKE ALL ON FUNCTION api_keys._merge_usage(bigint, uuid, uuid[], timestamptz[], bigint[], bigint[],
                                             bigint[], uuid[], timestamptz[], inet[], uuid[],
                                             timestamptz[], bigint[], bigint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api_keys._merge_usage(bigint, uuid, uuid[], timestamptz[], bigint[], bigint[],
                                                bigint[], uuid[], timestamptz[], inet[], uuid[],
                                                timestamptz[], bigint[], bigint[]) TO api_keys_standby;

-- Issue 18: metering. Credits (remaining uses, refilled daily or monthly) on keys,
-- limits shared by all keys of an owner (api_keys.owner_limits, copied into each key),
-- per-outcome usage counts, and the uses spent per credit period (api_keys.credit_use).
-- api_key_issue, api_key_update and api_key_rotate take new arguments, so each is a new
-- function that takes the privileges of the one it replaces.

ALTER TABLE api_keys.keys
    ADD COLUMN uses_granted bigint CHECK (uses_granted BETWEEN 0 AND 1000000000000),
    ADD COLUMN uses_from timestamptz,
    ADD COLUMN refill_amount bigint CHECK (refill_amount BETWEEN 1 AND 1000000000000),
    ADD COLUMN refill_interval text CHECK (refill_interval IN ('daily', 'monthly')),
    ADD COLUMN uses_period timestamptz,
    ADD COLUMN uses_spent bigint NOT NULL DEFAULT 0 CHECK (uses_spent >= 0),
    ADD COLUMN owner_rate_limit_per_minute integer CHECK (owner_rate_limit_per_minute > 0),
    ADD COLUMN owner_rate_limit_per_hour integer CHECK (owner_rate_limit_per_hour > 0),
    ADD CONSTRAINT keys_uses_from_check CHECK ((uses_granted IS NULL) = (uses_from IS NULL)),
    ADD CONSTRAINT keys_refill_check CHECK ((refill_amount IS NULL) = (refill_interval IS NULL)
                                            AND (refill_amount IS NULL OR uses_granted IS NOT NULL));

COMMENT ON COLUMN api_keys.keys.uses_granted IS
    'The uses the key had at uses_from (set by issue, update, rotate, set_credits); NULL: unlimited.';
COMMENT ON COLUMN api_keys.keys.uses_from IS
    'When uses_granted was set: the start of the first credit period.';
COMMENT ON COLUMN api_keys.keys.uses_period IS
    'The credit period uses_spent counts in (workers only): uses_from, or the start of the UTC day or month of a refill.';
COMMENT ON COLUMN api_keys.keys.uses_spent IS
    'The uses spent in uses_period, as written by all servers (workers only).';
COMMENT ON COLUMN api_keys.keys.owner_rate_limit_per_minute IS
    'A copy of the owner''s limit (api_keys.owner_limits), kept by triggers; NULL: none.';
COMMENT ON COLUMN api_keys.keys.owner_rate_limit_per_hour IS
    'A copy of the owner''s limit (api_keys.owner_limits), kept by triggers; NULL: none.';

-- Limits shared by all keys of one owner (api_key_set_owner_limits, admins). Each key
-- carries a copy (keys.owner_rate_limit_*), kept by the triggers of sql/lifecycle.sql.
CREATE TABLE api_keys.owner_limits (
    owner                 text PRIMARY KEY CHECK (owner <> ''),
    rate_limit_per_minute integer CHECK (rate_limit_per_minute > 0),
    rate_limit_per_hour   integer CHECK (rate_limit_per_hour > 0),
    updated_at            timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_by            text NOT NULL,
    CONSTRAINT owner_limits_some_limit_check
        CHECK (rate_limit_per_minute IS NOT NULL OR rate_limit_per_hour IS NOT NULL)
);

COMMENT ON TABLE api_keys.owner_limits IS
    'Rate limits shared by all keys of an owner, on top of each key''s own; set by api_key_set_owner_limits (admins).';

-- One row per owner that has had a key or limits: the row a change of the owner's
-- limits locks (and updates) and a key's copy of them locks shared, so that a key
-- issued while the limits change ends up with the new ones (sql/lifecycle.sql). A
-- table nobody but the extension's functions can touch: no role can hold these locks
-- to stall another owner's keys. Not dumped: rebuilt as keys are issued.
CREATE TABLE api_keys.owner_registry (
    owner             text PRIMARY KEY,
    limits_changed_at timestamptz
);

COMMENT ON TABLE api_keys.owner_registry IS
    'Internal: the row locked to order changes of an owner''s limits with the copies into its keys.';

ALTER TABLE api_keys.usage
    ADD COLUMN rate_limited bigint NOT NULL DEFAULT 0 CHECK (rate_limited >= 0),
    ADD COLUMN usage_exceeded bigint NOT NULL DEFAULT 0 CHECK (usage_exceeded >= 0),
    ADD COLUMN invalid_secret bigint NOT NULL DEFAULT 0 CHECK (invalid_secret >= 0),
    ADD COLUMN suspended bigint NOT NULL DEFAULT 0 CHECK (suspended >= 0),
    ADD COLUMN revoked bigint NOT NULL DEFAULT 0 CHECK (revoked >= 0),
    ADD COLUMN expired bigint NOT NULL DEFAULT 0 CHECK (expired >= 0),
    ADD COLUMN ip_not_allowed bigint NOT NULL DEFAULT 0 CHECK (ip_not_allowed >= 0),
    ADD COLUMN insufficient_scope bigint NOT NULL DEFAULT 0 CHECK (insufficient_scope >= 0);

COMMENT ON TABLE api_keys.usage IS
    'Verifications per key per hour and per server that counted them (source; the nil uuid: before 0.5.0): verified (valid) and rejected (the key was found but the call failed a check; forgeries are not counted), and the rejections by reason (rate_limited … insufficient_scope; 0 in rows counted before 0.5.0). Kept current within api_keys.flush_interval; standbys send theirs to the primary.';

-- The uses spent of each key's credits, per credit period, per writer: a server's
-- source and the time its count started (since). As in usage, each writer writes its
-- total and the larger total wins. Written by the workers only (_merge_usage); no
-- foreign key, and deleting a key removes its rows.
CREATE TABLE api_keys.credit_use (
    key_id uuid NOT NULL,
    period timestamptz NOT NULL,
    source uuid NOT NULL,
    since  bigint NOT NULL,
    spent  bigint NOT NULL CHECK (spent >= 0),
    tick   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, period, source, since)
);

COMMENT ON TABLE api_keys.credit_use IS
    'Uses spent per key per credit period per writer (a server''s source and the time its count started); written by workers only, the larger total wins.';

-- Other servers' spending, from the ticks a server has not read yet.
CREATE INDEX credit_use_tick_idx ON api_keys.credit_use (tick);

-- Credits (README, "Credits"); verification (Rust) counts the same way. The credit
-- period at `at`: uses_from, or with a refill the start of the UTC day or month of
-- `at` when that is later (each refill starts a period).
CREATE FUNCTION api_keys._credit_period(uses_from timestamptz, refill_interval text, at timestamptz)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN refill_interval IS NULL THEN uses_from
                ELSE greatest(uses_from,
                              date_trunc(CASE refill_interval WHEN 'daily' THEN 'day'
                                                              WHEN 'monthly' THEN 'month' END,
                                         at, 'UTC'))
           END
$$;

-- The uses left at `at`: the uses of the period (refill_amount once a refill started
-- it, uses_granted before) less those the workers wrote for it; NULL: unlimited.
CREATE FUNCTION api_keys._remaining_uses(k api_keys.keys, at timestamptz) RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN k.uses_granted IS NULL THEN NULL
                ELSE greatest(CASE WHEN p.period > k.uses_from THEN k.refill_amount
                                   ELSE k.uses_granted END
                              - CASE WHEN k.uses_period = p.period THEN k.uses_spent ELSE 0 END,
                              0)
           END
      FROM (SELECT api_keys._credit_period(k.uses_from, k.refill_interval, at) AS period) p
$$;

-- The next refill after `at` (the next UTC day or month start; never before uses_from);
-- NULL without a refill.
CREATE FUNCTION api_keys._next_refill(uses_from timestamptz, refill_interval text, at timestamptz)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    -- In UTC throughout: timestamptz + interval would count days in the session's zone.
    SELECT (CASE refill_interval
                WHEN 'daily' THEN date_trunc('day', greatest(uses_from, at) AT TIME ZONE 'UTC') + interval '1 day'
                WHEN 'monthly' THEN date_trunc('month', greatest(uses_from, at) AT TIME ZONE 'UTC') + interval '1 month'
            END) AT TIME ZONE 'UTC'
$$;

CREATE OR REPLACE VIEW api_keys.key_list WITH (security_barrier) AS
SELECT k.id, k.prefix, k.name, k.description, k.key_type, k.environment, k.owner,
       api_keys._effective_status(k.status, k.expires_at) AS status,
       k.status_reason, k.scopes, k.allowed_cidrs, k.expires_at, k.created_at, k.created_by,
       k.last_used_at, k.last_used_ip, k.rotated_from, k.rate_limit_per_minute,
       k.rate_limit_per_hour, k.metadata,
       api_keys._remaining_uses(k, pg_catalog.statement_timestamp()) AS remaining_uses,
       k.refill_amount, k.refill_interval,
       api_keys._next_refill(k.uses_from, k.refill_interval, pg_catalog.statement_timestamp()) AS refill_at,
       k.owner_rate_limit_per_minute, k.owner_rate_limit_per_hour
  FROM api_keys.keys k
 WHERE k.owner OPERATOR(pg_catalog.=) (SELECT api_keys._caller())
    OR (SELECT api_keys._caller_is_admin());

CREATE OR REPLACE VIEW api_keys.expiring_soon WITH (security_barrier) AS
SELECT l.*
  FROM api_keys.key_list l
 WHERE l.status OPERATOR(pg_catalog.=) 'active'::api_keys.key_status
   AND l.expires_at OPERATOR(pg_catalog.<=) (pg_catalog.statement_timestamp() OPERATOR(pg_catalog.+)
       -- current_setting, not pg_settings: it also sees a value SET before the library
       -- was loaded in this session.
       coalesce(NULLIF(pg_catalog.current_setting('api_keys.expiry_warning', true), '')::pg_catalog.interval,
                '7 days'::pg_catalog.interval));

CREATE OR REPLACE VIEW api_keys.usage_by_key WITH (security_barrier) AS
SELECT u.key_id, l.prefix, l.name, l.owner, u.hour,
       pg_catalog.sum(u.verified)::bigint AS verified,
       pg_catalog.sum(u.rejected)::bigint AS rejected,
       pg_catalog.sum(u.rate_limited)::bigint AS rate_limited,
       pg_catalog.sum(u.usage_exceeded)::bigint AS usage_exceeded,
       pg_catalog.sum(u.invalid_secret)::bigint AS invalid_secret,
       pg_catalog.sum(u.suspended)::bigint AS suspended,
       pg_catalog.sum(u.revoked)::bigint AS revoked,
       pg_catalog.sum(u.expired)::bigint AS expired,
       pg_catalog.sum(u.ip_not_allowed)::bigint AS ip_not_allowed,
       pg_catalog.sum(u.insufficient_scope)::bigint AS insufficient_scope
  FROM api_keys.usage u
  JOIN api_keys.key_list l ON l.id OPERATOR(pg_catalog.=) u.key_id
 GROUP BY u.key_id, l.prefix, l.name, l.owner, u.hour;

CREATE OR REPLACE VIEW api_keys.usage_by_owner WITH (security_barrier) AS
SELECT l.owner, u.hour,
       pg_catalog.count(DISTINCT u.key_id) AS keys,
       pg_catalog.sum(u.verified)::bigint AS verified,
       pg_catalog.sum(u.rejected)::bigint AS rejected,
       pg_catalog.sum(u.rate_limited)::bigint AS rate_limited,
       pg_catalog.sum(u.usage_exceeded)::bigint AS usage_exceeded,
       pg_catalog.sum(u.invalid_secret)::bigint AS invalid_secret,
       pg_catalog.sum(u.suspended)::bigint AS suspended,
       pg_catalog.sum(u.revoked)::bigint AS revoked,
       pg_catalog.sum(u.expired)::bigint AS expired,
       pg_catalog.sum(u.ip_not_allowed)::bigint AS ip_not_allowed,
       pg_catalog.sum(u.insufficient_scope)::bigint AS insufficient_scope
  FROM api_keys.usage u
  JOIN api_keys.key_list l ON l.id OPERATOR(pg_catalog.=) u.key_id
 GROUP BY l.owner, u.hour;

CREATE OR REPLACE FUNCTION api_keys._check_bounds(k api_keys.keys, old api_keys.keys) RETURNS void
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

CREATE OR REPLACE FUNCTION api_keys._impl_keys_audit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    changes jsonb;
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM api_keys.usage WHERE key_id OPERATOR(pg_catalog.=) OLD.id;
        DELETE FROM api_keys.credit_use WHERE key_id OPERATOR(pg_catalog.=) OLD.id;
        PERFORM api_keys._audit('deleted', OLD, api_keys._effective_status(OLD.status, OLD.expires_at),
                                NULL, NULL, jsonb_build_object('name', api_keys._audit_value(OLD.name),
                                                               'owner', api_keys._audit_value(OLD.owner)));
        RETURN OLD;
    END IF;
    -- The columns an UPDATE may change (the guard keeps the others fixed), each only
    -- when changed. Status has its own audit columns; last use, the uses spent, the
    -- copies of the owner's limits and the hash are not edits and never logged. New
    -- credits show as remaining_uses: the uses left before (as written) and given now.
    changes := api_keys._audit_change('name', OLD.name, NEW.name)
            || api_keys._audit_change('description', OLD.description, NEW.description)
            || api_keys._audit_change('owner', OLD.owner, NEW.owner)
            || api_keys._audit_change('scopes', OLD.scopes, NEW.scopes)
            || api_keys._audit_change('allowed_cidrs', OLD.allowed_cidrs, NEW.allowed_cidrs)
            || api_keys._audit_change('expires_at', OLD.expires_at, NEW.expires_at)
            || api_keys._audit_change('rate_limit_per_minute', OLD.rate_limit_per_minute, NEW.rate_limit_per_minute)
            || api_keys._audit_change('rate_limit_per_hour', OLD.rate_limit_per_hour, NEW.rate_limit_per_hour)
            || api_keys._audit_change('metadata', OLD.metadata, NEW.metadata)
            -- A new period is always an edit, even to as many uses as were left.
            || CASE WHEN (NEW.uses_granted, NEW.uses_from) IS DISTINCT FROM (OLD.uses_granted, OLD.uses_from)
                    THEN jsonb_build_object('remaining_uses', jsonb_build_object(
                             'old', api_keys._audit_value(api_keys._remaining_uses(OLD, statement_timestamp())),
                             'new', api_keys._audit_value(NEW.uses_granted)))
                    ELSE '{}'::jsonb END
            || api_keys._audit_change('refill_amount', OLD.refill_amount, NEW.refill_amount)
            || api_keys._audit_change('refill_interval', OLD.refill_interval, NEW.refill_interval);
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        -- The reason of a status change has its own column.
        PERFORM api_keys._audit(
            CASE NEW.status WHEN 'active' THEN 'reactivated' ELSE NEW.status::text END,
            NEW, OLD.status, NEW.status, NEW.status_reason, nullif(changes, '{}'::jsonb));
    ELSE
        changes := changes || api_keys._audit_change('status_reason', OLD.status_reason, NEW.status_reason);
        IF changes <> '{}'::jsonb THEN
            PERFORM api_keys._audit('updated', NEW, OLD.status, NEW.status, NULL, changes);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

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
        NEW.expires_at, NEW.rate_limit_per_minute, NEW.rate_limit_per_hour, NEW.metadata,
        NEW.uses_granted, NEW.uses_from, NEW.refill_amount, NEW.refill_interval)
       IS DISTINCT FROM
       (OLD.name, OLD.description, OLD.owner, OLD.scopes, OLD.allowed_cidrs,
        OLD.expires_at, OLD.rate_limit_per_minute, OLD.rate_limit_per_hour, OLD.metadata,
        OLD.uses_granted, OLD.uses_from, OLD.refill_amount, OLD.refill_interval)
       OR (NEW.status IS NOT DISTINCT FROM OLD.status
           AND NEW.status_reason IS DISTINCT FROM OLD.status_reason) THEN
        PERFORM api_keys._check_editable(OLD);
    END IF;
    -- The uses spent are the workers' (they write with triggers off), the owner's limits
    -- the copy triggers' (keys_owner_limits, owner_limits_copy). A change of the credits
    -- (the functions mark one by a new uses_from) starts a new period, now.
    NEW.uses_period := OLD.uses_period;
    NEW.uses_spent := OLD.uses_spent;
    NEW.owner_rate_limit_per_minute := OLD.owner_rate_limit_per_minute;
    NEW.owner_rate_limit_per_hour := OLD.owner_rate_limit_per_hour;
    IF (NEW.uses_granted, NEW.uses_from, NEW.refill_amount, NEW.refill_interval)
       IS DISTINCT FROM
       (OLD.uses_granted, OLD.uses_from, OLD.refill_amount, OLD.refill_interval) THEN
        NEW.uses_from := CASE WHEN NEW.uses_granted IS NOT NULL THEN clock_timestamp() END;
        NEW.uses_period := NULL;
        NEW.uses_spent := 0;
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

-- Keys and their owner's limits: a change of the limits takes the owner's row of
-- api_keys.owner_registry (updating it), a copy into a key takes it shared, so each
-- waits for the other. At READ COMMITTED a key then reads the limits committed before
-- it; at REPEATABLE READ or SERIALIZABLE a key whose snapshot predates a change of its
-- owner's limits fails with 40001 (the row was changed, or made, since the snapshot),
-- instead of copying limits its snapshot no longer shows. Row locks on a private table,
-- which no role can take on its own.
CREATE FUNCTION api_keys._lock_owner(of_owner text, for_change boolean) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO api_keys.owner_registry AS r (owner) VALUES (of_owner)
    ON CONFLICT ON CONSTRAINT owner_registry_pkey DO NOTHING;
    IF for_change THEN
        UPDATE api_keys.owner_registry r SET limits_changed_at = clock_timestamp()
         WHERE r.owner = of_owner;
    ELSE
        PERFORM FROM api_keys.owner_registry r WHERE r.owner = of_owner FOR SHARE;
    END IF;
END $$;

-- BEFORE INSERT, and UPDATE OF owner: the owner's limits into the key.
CREATE FUNCTION api_keys._keys_owner_limits() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.owner IS NOT DISTINCT FROM OLD.owner THEN
        RETURN NEW;
    END IF;
    PERFORM api_keys._lock_owner(NEW.owner, false);
    SELECT l.rate_limit_per_minute, l.rate_limit_per_hour
      INTO NEW.owner_rate_limit_per_minute, NEW.owner_rate_limit_per_hour
      FROM api_keys.owner_limits l WHERE l.owner = NEW.owner;
    RETURN NEW;
END $$;

CREATE TRIGGER keys_owner_limits BEFORE INSERT OR UPDATE OF owner ON api_keys.keys
    FOR EACH ROW EXECUTE FUNCTION api_keys._keys_owner_limits();

-- The owner's current limits into each of its keys that lacks them. A copy is no edit
-- for keys_guard to judge nor keys_audit to record: triggers are off.
CREATE FUNCTION api_keys._copy_owner_limits(key_owner text) RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET session_replication_role = replica
AS $$
    UPDATE api_keys.keys k
       SET owner_rate_limit_per_minute = l.per_minute,
           owner_rate_limit_per_hour = l.per_hour
      FROM (SELECT max(o.rate_limit_per_minute) AS per_minute, max(o.rate_limit_per_hour) AS per_hour
              FROM api_keys.owner_limits o
             WHERE o.owner = _copy_owner_limits.key_owner) l
     WHERE k.owner = _copy_owner_limits.key_owner
       AND (k.owner_rate_limit_per_minute, k.owner_rate_limit_per_hour)
           IS DISTINCT FROM (l.per_minute, l.per_hour)
$$;

-- AFTER each change of api_keys.owner_limits (also a restore's, whichever table it
-- loads first): the limits into the owner's keys.
CREATE FUNCTION api_keys._owner_limits_copy() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Keys being issued for the owner finish first; later ones wait for this change.
    IF TG_OP <> 'INSERT' THEN
        PERFORM api_keys._lock_owner(OLD.owner, true);
        PERFORM api_keys._copy_owner_limits(OLD.owner);
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.owner <> OLD.owner) THEN
        PERFORM api_keys._lock_owner(NEW.owner, true);
        PERFORM api_keys._copy_owner_limits(NEW.owner);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER owner_limits_copy AFTER INSERT OR UPDATE OR DELETE ON api_keys.owner_limits
    FOR EACH ROW EXECUTE FUNCTION api_keys._owner_limits_copy();

-- api_key_set_owner_limits (admins): set, change or (both NULL) remove the limits all
-- keys of `owner` share; returns them with the number of keys that carry them. One
-- audit entry ('owner_limits_changed', no key); the keys' copies are not audited.
CREATE FUNCTION api_keys._set_owner_limits(of_owner text, per_minute integer, per_hour integer)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    owned integer;
BEGIN
    -- Before the owner is trimmed or named in a message.
    PERFORM api_keys._check_length('owner', of_owner, 200);
    IF of_owner IS NULL OR btrim(of_owner) = '' THEN
        RAISE EXCEPTION 'owner must not be empty' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Name the owner whose keys share the limits, as api_keys.key_list shows it.';
    ELSIF per_minute <= 0 OR per_hour <= 0 THEN
        RAISE EXCEPTION '% must be positive (got %)',
                        CASE WHEN per_minute <= 0 THEN 'rate_limit_per_minute' ELSE 'rate_limit_per_hour' END,
                        CASE WHEN per_minute <= 0 THEN per_minute ELSE per_hour END
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Leave it NULL for no owner limit of that window; both NULL remove the owner''s limits.';
    END IF;
    -- The copy must see every key committed before the owner's row was locked.
    PERFORM api_keys._require_read_committed('api_key_set_owner_limits()');
    IF per_minute IS NULL AND per_hour IS NULL THEN
        DELETE FROM api_keys.owner_limits l WHERE l.owner = of_owner;
    ELSE
        INSERT INTO api_keys.owner_limits AS l
               (owner, rate_limit_per_minute, rate_limit_per_hour, updated_at, updated_by)
        VALUES (of_owner, per_minute, per_hour, now(), api_keys._caller())
        ON CONFLICT ON CONSTRAINT owner_limits_pkey DO UPDATE
           SET rate_limit_per_minute = EXCLUDED.rate_limit_per_minute,
               rate_limit_per_hour = EXCLUDED.rate_limit_per_hour,
               updated_at = EXCLUDED.updated_at,
               updated_by = EXCLUDED.updated_by;
    END IF;
    -- The trigger owner_limits_copy has locked the owner's row and copied the limits
    -- into its keys.
    SELECT count(*) INTO owned FROM api_keys.keys k WHERE k.owner = of_owner;
    PERFORM api_keys._audit('owner_limits_changed', NULL::api_keys.keys, NULL, NULL, NULL,
                            jsonb_build_object('owner', of_owner, 'rate_limit_per_minute', per_minute,
                                               'rate_limit_per_hour', per_hour, 'keys', owned));
    RETURN owned;
END $$;

-- SQL, not PL/pgSQL: input and output columns share names, as the contract's do.
CREATE FUNCTION api_keys._impl_api_key_set_owner_limits(owner text, rate_limit_per_minute integer,
                                                        rate_limit_per_hour integer)
RETURNS TABLE (owner text, rate_limit_per_minute integer, rate_limit_per_hour integer, keys integer)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT $1, $2, $3, api_keys._set_owner_limits($1, $2, $3)
$$;

CREATE FUNCTION api_keys.api_key_set_owner_limits(owner text, rate_limit_per_minute integer DEFAULT NULL,
                                                  rate_limit_per_hour integer DEFAULT NULL)
RETURNS TABLE (owner text, rate_limit_per_minute integer, rate_limit_per_hour integer, keys integer)
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'api_keys_as_caller';

COMMENT ON FUNCTION api_keys.api_key_set_owner_limits(text, integer, integer) IS
    'Admins: rate limits shared by all keys of an owner (both NULL: none); returns them and how many keys carry them.';

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

-- The template, issue, rotate and update with their new arguments (privileges below).
DROP FUNCTION api_keys._issue_template(text, api_keys.key_type, api_keys.environment, text[], text,
                                       timestamptz, cidr[], text, integer, integer, jsonb);

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

-- api_key_verify takes a cost and answers the key's limits (columns after the ones it
-- had, so SELECT valid, reason ... callers are unaffected): a new function that takes
-- the privileges of the one it replaces (below).
CREATE FUNCTION api_keys.api_key_verify(
    key text,
    client_ip inet DEFAULT NULL,
    required_scope text DEFAULT NULL,
    cost integer DEFAULT 1
) RETURNS TABLE (
    valid boolean, reason text, key_id uuid, owner text,
    key_type api_keys.key_type, environment api_keys.environment,
    scopes text[], expires_at timestamptz,
    rate_limit integer, rate_remaining integer, rate_reset timestamptz,
    remaining_uses bigint
)
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'api_key_verify';
COMMENT ON FUNCTION api_keys.api_key_verify(text, inet, text, integer) IS
    'One row for any input: valid, reason and, when valid, the key''s identity; once the secret matched, its limits (the window that runs out first, uses left).';

-- Each new version takes the privileges the database gave the version it replaces
-- (grant options included), and its initial privileges, from which pg_dump writes the
-- database's changes; then the old version goes. api_key_set_credits takes
-- api_key_update's.
DO $$
DECLARE
    pair record;
    grantee text;
BEGIN
    FOR pair IN
        SELECT v.old_version::regprocedure::oid AS old_version, v.new_version::regprocedure AS new_version
          FROM (VALUES
                ('api_keys.api_key_issue(text, api_keys.key_type, api_keys.environment, text[], text, timestamptz, cidr[], text, integer, integer, jsonb)',
                 'api_keys.api_key_issue(text, api_keys.key_type, api_keys.environment, text[], text, timestamptz, cidr[], text, integer, integer, jsonb, bigint, bigint, text)'),
                ('api_keys.api_key_update(uuid, text, text, text[], cidr[], timestamptz, integer, integer, jsonb)',
                 'api_keys.api_key_update(uuid, text, text, text[], cidr[], timestamptz, integer, integer, jsonb, bigint, bigint, text)'),
                ('api_keys.api_key_rotate(uuid, interval)',
                 'api_keys.api_key_rotate(uuid, interval, bigint)'),
                ('api_keys.api_key_verify(text, inet, text)',
                 'api_keys.api_key_verify(text, inet, text, integer)'),
                -- Whoever may change a key's settings may change its credits.
                ('api_keys.api_key_update(uuid, text, text, text[], cidr[], timestamptz, integer, integer, jsonb)',
                 'api_keys.api_key_set_credits(uuid, bigint, bigint, text)')) AS v(old_version, new_version)
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', pair.new_version);
        FOR grantee IN
            SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
                   || CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END
              FROM pg_catalog.pg_proc p,
                   pg_catalog.aclexplode(coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner)))
                       WITH ORDINALITY AS a(grantor, grantee, privilege_type, is_grantable, ordinality)
             WHERE p.oid = pair.old_version AND a.privilege_type = 'EXECUTE'
             ORDER BY a.ordinality
        LOOP
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %s', pair.new_version, grantee);
        END LOOP;
        UPDATE pg_catalog.pg_init_privs n
           SET initprivs = o.initprivs
          FROM pg_catalog.pg_init_privs o
         WHERE n.objoid = pair.new_version::oid AND n.classoid = 'pg_catalog.pg_proc'::regclass
           AND n.objsubid = 0
           AND o.objoid = pair.old_version AND o.classoid = 'pg_catalog.pg_proc'::regclass
           AND o.objsubid = 0;
    END LOOP;
END
$$;

DROP FUNCTION api_keys.api_key_issue(text, api_keys.key_type, api_keys.environment, text[], text,
                                     timestamptz, cidr[], text, integer, integer, jsonb),
              api_keys._impl_api_key_issue(text, api_keys.key_type, api_keys.environment, text[], text,
                                           timestamptz, cidr[], text, integer, integer, jsonb),
              api_keys.api_key_update(uuid, text, text, text[], cidr[], timestamptz, integer, integer, jsonb),
              api_keys._impl_api_key_update(uuid, text, text, text[], cidr[], timestamptz, integer, integer, jsonb),
              api_keys.api_key_rotate(uuid, interval),
              api_keys._impl_api_key_rotate(uuid, interval),
              api_keys.api_key_verify(text, inet, text);

CREATE OR REPLACE FUNCTION api_keys._impl_api_key_list(
    status api_keys.key_status,
    environment api_keys.environment,
    search text,
    owner text,
    order_by text,
    page_size integer,
    page integer
) RETURNS SETOF api_keys.key_list
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    sortable CONSTANT text[] := ARRAY[
        'id', 'prefix', 'name', 'description', 'key_type', 'environment', 'owner', 'status',
        'status_reason', 'scopes', 'allowed_cidrs', 'expires_at', 'created_at', 'created_by',
        'last_used_at', 'last_used_ip', 'rotated_from', 'rate_limit_per_minute',
        'rate_limit_per_hour', 'metadata', 'remaining_uses', 'refill_amount', 'refill_interval',
        'refill_at', 'owner_rate_limit_per_minute', 'owner_rate_limit_per_hour'];
    words text[];
    pattern text;
BEGIN
    PERFORM api_keys._check_length('order_by', order_by, 100);
    PERFORM api_keys._check_length('search', search, 200);
    PERFORM api_keys._check_length('owner', owner, 200);
    words := regexp_split_to_array(lower(btrim(coalesce(order_by, ''))), '\s+');
    IF array_length(words, 1) NOT BETWEEN 1 AND 2 OR NOT (words[1] = ANY (sortable))
       OR coalesce(words[2], 'asc') NOT IN ('asc', 'desc') THEN
        RAISE EXCEPTION 'order_by "%" is not a column of api_keys.key_list with optional asc or desc', order_by
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Sortable columns: ' || array_to_string(sortable, ', ') || '.';
    ELSIF page_size IS NULL OR page_size NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'page_size must be between 1 and 1000 (got %)', page_size
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF page IS NULL OR page < 1 THEN
        RAISE EXCEPTION 'page must be 1 or more (got %)', page
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- search is literal text: escape LIKE's wildcards.
    pattern := '%' || replace(replace(replace(search, '\', '\\'), '%', '\%'), '_', '\_') || '%';
    RETURN QUERY EXECUTE format(
        'SELECT * FROM api_keys.key_list l
          WHERE ($1 IS NULL OR l.status = $1)
            AND ($2 IS NULL OR l.environment = $2)
            AND ($3 IS NULL OR l.name ILIKE $3 OR l.prefix ILIKE $3)
            AND ($4 IS NULL OR l.owner = $4)
          ORDER BY l.%I %s NULLS LAST, l.id
          LIMIT $5 OFFSET $6',
        words[1], coalesce(words[2], 'asc'))
    USING status, environment, pattern, owner, page_size, (page::bigint - 1) * page_size;
END $$;

-- Privileges, as sql/grants.sql gives them.
REVOKE ALL ON api_keys.owner_limits, api_keys.credit_use, api_keys.owner_registry FROM PUBLIC;
REVOKE ALL ON FUNCTION api_keys._credit_period(timestamptz, text, timestamptz),
                       api_keys._remaining_uses(api_keys.keys, timestamptz),
                       api_keys._next_refill(timestamptz, text, timestamptz),
                       api_keys._check_credits(text, bigint, bigint, text),
                       api_keys._lock_owner(text, boolean),
                       api_keys._keys_owner_limits(),
                       api_keys._copy_owner_limits(text),
                       api_keys._owner_limits_copy(),
                       api_keys._set_owner_limits(text, integer, integer),
                       api_keys._impl_api_key_set_owner_limits(text, integer, integer),
                       api_keys.api_key_set_owner_limits(text, integer, integer),
                       api_keys._issue_template(text, api_keys.key_type, api_keys.environment, text[], text,
                                                timestamptz, cidr[], text, integer, integer, jsonb,
                                                bigint, bigint, text),
                       api_keys._impl_api_key_issue(text, api_keys.key_type, api_keys.environment, text[],
                                                    text, timestamptz, cidr[], text, integer, integer,
                                                    jsonb, bigint, bigint, text),
                       api_keys._impl_api_key_rotate(uuid, interval, bigint),
                       api_keys._impl_api_key_update(uuid, text, text, text[], cidr[], timestamptz,
                                                     integer, integer, jsonb, bigint, bigint, text),
                       api_keys._impl_api_key_set_credits(uuid, bigint, bigint, text)
  FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api_keys._credit_period(timestamptz, text, timestamptz),
                          api_keys._remaining_uses(api_keys.keys, timestamptz),
                          api_keys._next_refill(timestamptz, text, timestamptz) TO PUBLIC;
GRANT EXECUTE ON FUNCTION api_keys.api_key_set_owner_limits(text, integer, integer) TO api_keys_admin;
GRANT SELECT ON api_keys.owner_limits, api_keys.credit_use TO api_keys_admin;
GRANT SELECT (uses_granted, uses_from, refill_amount, refill_interval, uses_period, uses_spent,
              owner_rate_limit_per_minute, owner_rate_limit_per_hour),
      UPDATE (uses_granted, refill_amount, refill_interval)
   ON api_keys.keys TO api_keys_admin;
SELECT pg_catalog.pg_extension_config_dump('api_keys.owner_limits', '');
SELECT pg_catalog.pg_extension_config_dump('api_keys.credit_use', '');

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
                       api_keys._impl_api_key_rotate(text, interval, bigint),
                       api_keys.api_key_rotate(text, interval, bigint),
                       api_keys._impl_api_key_update(text, text, text, text[], cidr[], timestamptz, integer, integer, jsonb, bigint, bigint, text),
                       api_keys.api_key_update(text, text, text, text[], cidr[], timestamptz, integer, integer, jsonb, bigint, bigint, text),
                       api_keys._impl_api_key_set_credits(text, bigint, bigint, text),
                       api_keys.api_key_set_credits(text, bigint, bigint, text),
                       api_keys._impl_api_key_report_leaked(text[], text),
                       api_keys.api_key_report_leaked(text[], text)
  FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    api_keys.api_key_suspend(text, text),
    api_keys.api_key_reactivate(text),
    api_keys.api_key_revoke(text, text),
    api_keys.api_key_set_status(text, api_keys.key_status, text),
    api_keys.api_key_delete(text),
    api_keys.api_key_rotate(text, interval, bigint),
    api_keys.api_key_update(text, text, text, text[], cidr[], timestamptz, integer, integer, jsonb, bigint, bigint, text),
    api_keys.api_key_set_credits(text, bigint, bigint, text)
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
                             'api_key_update', 'api_key_set_credits')
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
