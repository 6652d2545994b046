-- Valid keys with credits (a trillion uses) whose owner has owner-wide limits (far above
-- what the benchmark reaches), already in the shared memo: every call spends one use
-- and counts in the owner's windows as well as the key's.
\set n random(1, :nkeys)
SELECT * FROM api_keys.api_key_verify((SELECT key FROM bench.metered WHERE n = :n));
