-- Baseline: a plain lookup of one key row by prefix, as a superuser.
-- Same key sampling (random n, primary-key subselect) as the verify scripts.
\set n random(1, :nkeys)
SELECT id, status, scopes FROM api_keys.keys
 WHERE prefix = (SELECT prefix FROM bench.keys WHERE n = :n);
