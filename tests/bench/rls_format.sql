-- RLS baseline for rls_has_scope.sql: the same per-row scope text, no has_scope.
BEGIN;
SELECT api_keys.login((SELECT key FROM bench.rls_key));
SELECT count(*) FROM bench.runs WHERE bench.runs_read(project) <> '';
COMMIT;
