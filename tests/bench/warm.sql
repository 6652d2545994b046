-- Valid keys whose (key, hash) fact is already in the shared memo.
\set n random(1, :nkeys)
SELECT * FROM api_keys.api_key_verify((SELECT key FROM bench.keys WHERE n = :n));
