\set ON_ERROR_ROLLBACK on
\set SHOW_CONTEXT never
-- Settings that weaken security are superuser-only (or fixed at server start/reload).
-- Every api_keys setting is listed with who may change it: a new one shows up here and
-- must be reviewed. Only the expiry horizon and the audit actor are left to any role.
begin;
SELECT name, context FROM pg_settings WHERE name LIKE 'api_keys.%' ORDER BY name;
SELECT name AS settable_by_anyone FROM pg_settings
 WHERE name LIKE 'api_keys.%' AND context NOT IN ('superuser', 'postmaster', 'sighup')
 ORDER BY name;

CREATE ROLE regress_plain;
SET ROLE regress_plain;
SELECT s.name, regress.expect_error(format('SET %s = %L', s.name, s.setting)) AS as_plain_role
  FROM pg_settings s WHERE s.name LIKE 'api_keys.%' AND s.context = 'superuser'
 ORDER BY s.name;
RESET ROLE;
rollback;
