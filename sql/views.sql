-- What each role may see: the caller, the effective status, and the views over the keys
-- and their usage.

-- The role a call acts for: current_user at its call site, also inside the SECURITY
-- DEFINER implementations of the management functions, which note it on entry
-- (src/postgres/caller.rs). So inside anyone's SECURITY DEFINER function it is that function's
-- owner, as PostgreSQL has it; under PostgREST (SET ROLE) the request's role.
-- _caller_is_admin pins search_path: the views call it with the caller's search_path in
-- force, and a caller could otherwise shadow a type or operator it uses (pg_temp comes
-- first for types unless placed last).
CREATE FUNCTION api_keys._caller() RETURNS text
LANGUAGE c STABLE PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'api_keys_caller';

CREATE FUNCTION api_keys._caller_is_admin() RETURNS boolean
LANGUAGE sql STABLE PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_has_role(api_keys._caller()::name, 'api_keys_admin', 'MEMBER')
$$;

-- Status as users see it: past expires_at, an active or suspended key is expired.
-- Statement time, not transaction time: a long transaction sees expiry as it happens.
CREATE FUNCTION api_keys._effective_status(status api_keys.key_status, expires_at timestamptz)
RETURNS api_keys.key_status
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE
               WHEN status OPERATOR(pg_catalog.=) ANY (ARRAY['active', 'suspended']::api_keys.key_status[])
                    AND expires_at OPERATOR(pg_catalog.<=) pg_catalog.statement_timestamp()
               THEN 'expired'::api_keys.key_status
               ELSE status
           END
$$;

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

CREATE VIEW api_keys.key_list WITH (security_barrier) AS
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

COMMENT ON VIEW api_keys.key_list IS
    'Keys the caller may see (its own; all for api_keys_admin), with effective status. Never the hash.';

CREATE VIEW api_keys.expiring_soon WITH (security_barrier) AS
SELECT l.*
  FROM api_keys.key_list l
 WHERE l.status OPERATOR(pg_catalog.=) 'active'::api_keys.key_status
   AND l.expires_at OPERATOR(pg_catalog.<=) (pg_catalog.statement_timestamp() OPERATOR(pg_catalog.+)
       -- current_setting, not pg_settings: it also sees a value SET before the library
       -- was loaded in this session.
       coalesce(NULLIF(pg_catalog.current_setting('api_keys.expiry_warning', true), '')::pg_catalog.interval,
                '7 days'::pg_catalog.interval));

COMMENT ON VIEW api_keys.expiring_soon IS
    'Active keys expiring within setting api_keys.expiry_warning (default 7 days).';

-- Summed over the servers that counted them (api_keys.usage.source).
CREATE VIEW api_keys.usage_by_key WITH (security_barrier) AS
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

COMMENT ON VIEW api_keys.usage_by_key IS
    'Hourly usage of the keys the caller may see.';

CREATE VIEW api_keys.usage_by_owner WITH (security_barrier) AS
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

COMMENT ON VIEW api_keys.usage_by_owner IS
    'Hourly usage summed over each owner''s keys (org-wide), for the owners the caller may see.';

-- The audit entries of the keys the caller may see; admins see every entry (deleted
-- keys' history and signing-key rotations too). The log itself stays admins-only.
CREATE VIEW api_keys.key_audit WITH (security_barrier) AS
SELECT a.id, a.at, a.key_id, a.prefix, a.action, a.actor, a.app_actor,
       a.old_status, a.new_status, a.reason, a.details
  FROM api_keys.audit_log a
 WHERE (SELECT api_keys._caller_is_admin())
    OR a.key_id IN (SELECT l.id FROM api_keys.key_list l);

COMMENT ON VIEW api_keys.key_audit IS
    'The audit entries of the keys the caller may see (admins: all of them).';
