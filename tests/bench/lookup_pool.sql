-- Baseline for the scenarios drawing from a pool: a plain lookup of one key row by
-- prefix, as a superuser, the prefix drawn from the same pool table the same way (run.sh
-- puts the pool's name in place of :pool).
\set w random(1, :nwrong)
SELECT id, status, scopes FROM api_keys.keys
 WHERE prefix = (SELECT prefix FROM :pool WHERE n = :w);
