-- api_keys 0.2.0 -> 0.3.0
\echo Use "ALTER EXTENSION api_keys UPDATE TO '0.3.0'" to load this file. \quit

-- The request context for PostgREST-style apps: authenticate(), login() and the RLS
-- helpers. The context lives in backend memory for one transaction.
CREATE FUNCTION api_keys.authenticate() RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'api_keys_authenticate';
COMMENT ON FUNCTION api_keys.authenticate() IS
    'PostgREST db-pre-request: verifies the x-api-key (or Bearer) key of request.headers and sets this transaction''s context; no key = anonymous.';

CREATE FUNCTION api_keys.login(key text, client_ip inet DEFAULT NULL) RETURNS uuid
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'api_keys_login';
COMMENT ON FUNCTION api_keys.login(text, inet) IS
    'Verifies a key and makes it this transaction''s context; returns its id, or raises PT401/PT403/PT429.';

CREATE FUNCTION api_keys.require_scope(required text) RETURNS void
LANGUAGE c STABLE CALLED ON NULL INPUT PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'api_keys_require_scope';
COMMENT ON FUNCTION api_keys.require_scope(text) IS
    'Raises PT401 when no key is authenticated in this transaction, PT403 when it lacks the scope.';

CREATE FUNCTION api_keys.current_key_id() RETURNS uuid
STRICT STABLE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'current_key_id_wrapper';

CREATE FUNCTION api_keys.current_owner() RETURNS text
STRICT STABLE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'current_owner_wrapper';

CREATE FUNCTION api_keys.has_scope(required text) RETURNS boolean
STRICT STABLE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'has_scope_wrapper';

-- As in grants.sql: functions start with EXECUTE for PUBLIC; take it away, then grant.
REVOKE ALL ON FUNCTION api_keys.authenticate(), api_keys.login(text, inet),
                       api_keys.has_scope(text), api_keys.require_scope(text),
                       api_keys.current_key_id(), api_keys.current_owner() FROM PUBLIC;
-- Verifiers check keys presented to them; they cannot list or change any. authenticate
-- and login also set the transaction's request context (PostgREST's anonymous role is
-- made a member of api_keys_verifier, see examples/postgrest).
GRANT EXECUTE ON FUNCTION api_keys.api_key_verify(text, inet, text),
                          api_keys.authenticate(),
                          api_keys.login(text, inet) TO api_keys_verifier;

-- The request context reveals only what the caller's own transaction authenticated,
-- and RLS policies of any table owner call these.
GRANT EXECUTE ON FUNCTION api_keys.has_scope(text), api_keys.require_scope(text),
                          api_keys.current_key_id(), api_keys.current_owner() TO PUBLIC;
