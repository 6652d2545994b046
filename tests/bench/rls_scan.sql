-- RLS baseline for rls_initplan.sql: the scan without any check.
BEGIN;
SELECT api_keys.login((SELECT key FROM bench.rls_key));
SELECT count(*) FROM bench.runs WHERE project >= 0;
COMMIT;
