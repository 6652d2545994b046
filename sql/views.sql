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

CREATE VIEW api_keys.key_list WITH (security_barrier) AS
SELECT k.id, k.prefix, k.name, k.description, k.key_type, k.environment, k.owner,
       api_keys._effective_status(k.status, k.expires_at) AS status,
       k.status_reason, k.scopes, k.allowed_cidrs, k.expires_at, k.created_at, k.created_by,
       k.last_used_at, k.last_used_ip, k.rotated_from, k.rate_limit_per_minute,
       k.rate_limit_per_hour, k.metadata
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
       pg_catalog.sum(u.rejected)::bigint AS rejected
  FROM api_keys.usage u
  JOIN api_keys.key_list l ON l.id OPERATOR(pg_catalog.=) u.key_id
 GROUP BY u.key_id, l.prefix, l.name, l.owner, u.hour;

COMMENT ON VIEW api_keys.usage_by_key IS
    'Hourly usage of the keys the caller may see.';

CREATE VIEW api_keys.usage_by_owner WITH (security_barrier) AS
SELECT l.owner, u.hour,
       pg_catalog.count(DISTINCT u.key_id) AS keys,
       pg_catalog.sum(u.verified)::bigint AS verified,
       pg_catalog.sum(u.rejected)::bigint AS rejected
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
