-- A policy check that does not depend on the row, written (SELECT api_keys.has_scope(...)):
-- evaluated once per statement.
BEGIN;
SELECT api_keys.login((SELECT key FROM bench.rls_key));
SELECT count(*) FROM bench.runs WHERE project >= 0 AND (SELECT api_keys.has_scope(bench.runs_read(42)));
COMMIT;
