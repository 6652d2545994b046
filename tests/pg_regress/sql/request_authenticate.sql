\set ON_ERROR_ROLLBACK on
\set SHOW_CONTEXT never
-- authenticate(), PostgREST's db-pre-request: the key from request.headers (x-api-key,
-- else a Bearer token of this installation's key shape), JWTs passed through, no key =
-- anonymous; the client address from the connection or trusted proxies' X-Forwarded-For.
begin;
SET search_path = api_keys, public;
SET api_keys.argon2_memory_kib = 64;
SET api_keys.argon2_iterations = 1;

SELECT id AS a_id, key AS a FROM api_key_issue('alice', 'service', 'production', owner => 'alice') \gset
SELECT id AS b_id, key AS b FROM api_key_issue('bob', 'service', 'production', owner => 'bob') \gset
SELECT key AS n FROM api_key_issue('net', 'service', 'production', owner => 'carol',
                                   allowed_cidrs => '{198.51.100.0/24}') \gset

CREATE FUNCTION pg_temp.request(headers text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('request.headers', headers, true);
    PERFORM api_keys.authenticate();
    RETURN coalesce(api_keys.current_owner(), 'anonymous');
EXCEPTION WHEN OTHERS THEN
    RETURN 'error ' || regress.mask(SQLSTATE || ': ' || SQLERRM);
END
$$;

-- no headers at all, and headers without a key: anonymous; a present but empty or blank
-- x-api-key is presented (malformed), so a client whose key variable is unset gets 401
SELECT authenticate(), current_owner();
SELECT label, pg_temp.request(h) AS outcome FROM (VALUES
    ('empty', ''),
    ('no key', '{"accept": "application/json"}'),
    ('x-api-key', format('{"x-api-key": "%s"}', :'a')),
    ('x-api-key first', format('{"x-api-key": "%s", "authorization": "Bearer %s"}', :'a', :'b')),
    ('bearer key', format('{"authorization": "Bearer %s"}', :'b')),
    ('bearer, any case', format('{"authorization": "bearer  %s"}', :'b')),
    ('empty x-api-key', '{"x-api-key": ""}'),
    ('blank x-api-key', '{"x-api-key": "  "}'),
    ('jwt', '{"authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoid2ViX2Fub24ifQ.c2ln"}'),
    ('basic auth', '{"authorization": "Basic YWxhZGRpbjpvcGVuc2VzYW1l"}'),
    ('other brand', '{"authorization": "Bearer zz_live_AAAAAAAAAAAA_x"}'),
    ('garbage x-api-key', '{"x-api-key": "hello"}'),
    ('mistyped bearer key', format('{"authorization": "Bearer %s"}', left(:'a', -2))),
    ('not json', 'x-api-key: nope'),
    ('json array', '[]')
  ) AS t(label, h);

-- an anonymous request after an authenticated one in the same transaction is anonymous
SELECT pg_temp.request(format('{"x-api-key": "%s"}', :'a')) AS first,
       pg_temp.request('{}') AS second;

-- over a Unix socket there is no client address: a key with CIDR rules is refused, and
-- X-Forwarded-For is ignored without trusted proxies
SELECT pg_temp.request(format('{"x-api-key": "%s", "x-forwarded-for": "198.51.100.7"}', :'n')) AS outcome;

-- api_keys.trusted_proxies is superuser-only and checked when set
SET api_keys.trusted_proxies = '10.0.0.0/8, 192.0.2.1, ::1';
SHOW api_keys.trusted_proxies;
SET api_keys.trusted_proxies = '10.0.0.0/8, nonsense';
RESET api_keys.trusted_proxies;
CREATE ROLE regress_plain;
SET ROLE regress_plain;
SELECT regress.expect_error($$SET api_keys.trusted_proxies = '0.0.0.0/0'$$);
SELECT regress.expect_error($$SELECT set_config('api_keys.trusted_proxies', '0.0.0.0/0', true)$$);
RESET ROLE;
rollback;
