-- A policy check that depends on the row: has_scope per row (key holds projects/42/*:read;
-- bench.runs_read(p) is format('projects/%s/runs:read', p)).
BEGIN;
SELECT api_keys.login((SELECT key FROM bench.rls_key));
SELECT count(*) FROM bench.runs WHERE api_keys.has_scope(bench.runs_read(project));
COMMIT;
