-- api_keys: roles, types, tables and indexes. Everything else builds on these.
-- Objects are schema-qualified and operators pinned (OPERATOR(pg_catalog.=)) so no
-- caller's search_path can redirect them.

-- Roles are cluster-wide: create them once and keep them across DROP EXTENSION.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'api_keys_admin') THEN
        CREATE ROLE api_keys_admin NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'api_keys_verifier') THEN
        CREATE ROLE api_keys_verifier NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'api_keys_standby') THEN
        CREATE ROLE api_keys_standby NOLOGIN;
    END IF;
END
$roles$;

CREATE TYPE api_keys.key_type AS ENUM ('service', 'user');

CREATE TYPE api_keys.environment AS ENUM ('production', 'staging', 'development');

CREATE TYPE api_keys.key_status AS ENUM ('active', 'suspended', 'revoked', 'expired');

CREATE TABLE api_keys.keys (
    id                    uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    prefix                text NOT NULL UNIQUE,
    secret_hash           text NOT NULL,
    name                  text NOT NULL CHECK (pg_catalog.btrim(name) <> ''),
    description           text,
    key_type              api_keys.key_type NOT NULL,
    environment           api_keys.environment NOT NULL,
    owner                 text NOT NULL CHECK (owner <> ''),
    status                api_keys.key_status NOT NULL DEFAULT 'active',
    status_reason         text,
    status_changed_at     timestamptz,
    scopes                text[] NOT NULL DEFAULT ARRAY['*']
                          CHECK (pg_catalog.array_position(scopes, NULL) IS NULL),
    allowed_cidrs         cidr[] NOT NULL DEFAULT '{}'
                          CHECK (pg_catalog.array_position(allowed_cidrs, NULL) IS NULL),
    expires_at            timestamptz,
    created_at            timestamptz NOT NULL DEFAULT pg_catalog.now(),
    created_by            text NOT NULL,
    last_used_at          timestamptz,
    last_used_ip          inet,
    -- No foreign key: a rotated-from key may be deleted; the audit log keeps its story.
    rotated_from          uuid,
    rate_limit_per_minute integer CHECK (rate_limit_per_minute > 0),
    rate_limit_per_hour   integer CHECK (rate_limit_per_hour > 0),
    metadata              jsonb NOT NULL DEFAULT '{}' CHECK (pg_catalog.jsonb_typeof(metadata) = 'object'),
    -- The id of the signing key that signed the key (sql/signing.sql); NULL for a key
    -- issued before 0.5.0, which verifies without a signature until rotated.
    signing_key           text CHECK (signing_key ~ '^[0-9A-Za-z]{4}$'),
    -- Credits (README, "Credits"): the uses the key had at uses_from (NULL: unlimited),
    -- and an optional refill at each UTC day or month. uses_period and uses_spent are
    -- written by the workers only (api_keys._merge_usage); every other change of the
    -- credits starts a new period (keys_guard).
    uses_granted          bigint CHECK (uses_granted BETWEEN 0 AND 1000000000000),
    uses_from             timestamptz,
    refill_amount         bigint CHECK (refill_amount BETWEEN 1 AND 1000000000000),
    refill_interval       text CHECK (refill_interval IN ('daily', 'monthly')),
    uses_period           timestamptz,
    uses_spent            bigint NOT NULL DEFAULT 0 CHECK (uses_spent >= 0),
    -- A copy of the owner's limits (api_keys.owner_limits), kept by triggers, so that
    -- verification reads nothing but the key row. NULL: no owner limit.
    owner_rate_limit_per_minute integer CHECK (owner_rate_limit_per_minute > 0),
    owner_rate_limit_per_hour   integer CHECK (owner_rate_limit_per_hour > 0),
    CONSTRAINT keys_uses_from_check CHECK ((uses_granted IS NULL) = (uses_from IS NULL)),
    CONSTRAINT keys_refill_check CHECK ((refill_amount IS NULL) = (refill_interval IS NULL)
                                        AND (refill_amount IS NULL OR uses_granted IS NOT NULL))
);

COMMENT ON TABLE api_keys.keys IS
    'API keys. secret_hash is an argon2id PHC string; only superusers can read it.';
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

CREATE INDEX keys_owner_idx ON api_keys.keys (owner);

CREATE INDEX keys_expires_at_idx ON api_keys.keys (expires_at) WHERE expires_at IS NOT NULL;

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

CREATE TABLE api_keys.scope_catalog (
    resource    text NOT NULL,
    action      text NOT NULL,
    description text,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (resource, action)
);

COMMENT ON TABLE api_keys.scope_catalog IS
    'When it has rows, issued scopes must match one of them.';

CREATE TABLE api_keys.audit_log (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    key_id     uuid,
    prefix     text,
    action     text NOT NULL CHECK (action IN ('issued', 'updated', 'suspended', 'reactivated',
                                              'revoked', 'expired', 'rotated', 'deleted',
                                              'signing_key_rotated', 'owner_limits_changed')),
    actor      text NOT NULL,
    app_actor  text,
    old_status api_keys.key_status,
    new_status api_keys.key_status,
    reason     text,
    details    jsonb NOT NULL DEFAULT '{}'
);

COMMENT ON TABLE api_keys.audit_log IS
    'Append-only history of every key change; api_keys.audit_prune() is the only way out.';

COMMENT ON COLUMN api_keys.audit_log.actor IS 'The role that made the change.';

COMMENT ON COLUMN api_keys.audit_log.app_actor IS 'Setting api_keys.actor at the time, when an application set it.';

CREATE INDEX audit_log_key_idx ON api_keys.audit_log (key_id, at);

CREATE INDEX audit_log_at_idx ON api_keys.audit_log (at);

-- Hourly verification counts per key, written by the background worker from shared
-- memory (never by the verifying transaction). No foreign key: a key deleted while its
-- counts are in flight must not fail the flush; deleting a key removes its rows.
CREATE TABLE api_keys.usage (
    key_id   uuid NOT NULL,
    hour     timestamptz NOT NULL,
    verified bigint NOT NULL DEFAULT 0 CHECK (verified >= 0),
    rejected bigint NOT NULL DEFAULT 0 CHECK (rejected >= 0),
    source   uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000',
    tick     bigint NOT NULL DEFAULT 0,
    -- The rejections by reason (0.5.0; rows counted before have 0s): they add up to
    -- rejected for rows written since.
    rate_limited       bigint NOT NULL DEFAULT 0 CHECK (rate_limited >= 0),
    usage_exceeded     bigint NOT NULL DEFAULT 0 CHECK (usage_exceeded >= 0),
    invalid_secret     bigint NOT NULL DEFAULT 0 CHECK (invalid_secret >= 0),
    suspended          bigint NOT NULL DEFAULT 0 CHECK (suspended >= 0),
    revoked            bigint NOT NULL DEFAULT 0 CHECK (revoked >= 0),
    expired            bigint NOT NULL DEFAULT 0 CHECK (expired >= 0),
    ip_not_allowed     bigint NOT NULL DEFAULT 0 CHECK (ip_not_allowed >= 0),
    insufficient_scope bigint NOT NULL DEFAULT 0 CHECK (insufficient_scope >= 0),
    PRIMARY KEY (key_id, hour, source)
);

COMMENT ON TABLE api_keys.usage IS
    'Verifications per key per hour and per server that counted them (source; the nil uuid: before 0.5.0): verified (valid) and rejected (the key was found but the call failed a check; forgeries are not counted), and the rejections by reason (rate_limited … insufficient_scope; 0 in rows counted before 0.5.0). Kept current within api_keys.flush_interval; standbys send theirs to the primary.';
COMMENT ON COLUMN api_keys.usage.source IS
    'The server run that counted these calls: a primary, a standby, or one of them before a crash. Each writes its own totals, so a total sent twice counts once.';
COMMENT ON COLUMN api_keys.usage.tick IS
    'The api_keys.usage_clock tick of the write that last changed the row: servers read other servers'' new counts from the ticks they have not seen.';

-- Other servers' counts of the current hour, from the ticks a server has not read yet.
CREATE INDEX usage_hour_tick_idx ON api_keys.usage (hour, tick);

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

-- One row: the tick of the last usage write. Every write takes the next one with the
-- row locked until it commits, so ticks become visible in order (on standbys too) and
-- a reader that has seen tick n has seen every row written up to n. Not dumped: a
-- restored database counts on from 0 (readers compare with this row, not with rows).
CREATE TABLE api_keys.usage_clock (
    one  boolean PRIMARY KEY DEFAULT true CHECK (one),
    tick bigint NOT NULL DEFAULT 0
);
INSERT INTO api_keys.usage_clock DEFAULT VALUES;

-- Server signing keys (sql/signing.sql): every key issued carries a MAC made with the
-- newest, so verification refuses a forged secret for one HMAC. Superusers only.
CREATE TABLE api_keys.signing_keys (
    id         text NOT NULL CHECK (id ~ '^[0-9A-Za-z]{4}$'),
    secret     bytea NOT NULL CHECK (pg_catalog.octet_length(secret) = 32),
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- Ids are unique within a database, except after a restore: the dumped keys join the
-- one its CREATE EXTENSION made (verification tries each of an id). No row twice; the
-- index holds a digest of the secret, so a duplicate's error message shows no secret.
CREATE UNIQUE INDEX signing_keys_id_secret_key
    ON api_keys.signing_keys (id, pg_catalog.sha256(secret));

COMMENT ON TABLE api_keys.signing_keys IS
    'Server signing keys (secret: 32 bytes for HMAC-SHA-256). The newest signs new keys; all verify. Superusers only.';
