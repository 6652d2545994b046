-- Flood of wrong secrets for real prefixes: each key has a real prefix, a random
-- wrong secret and a valid checksum, drawn from a pool of :nwrong precomputed keys
-- spread evenly over all prefixes.
\set w random(1, :nwrong)
SELECT * FROM api_keys.api_key_verify((SELECT key FROM bench.wrong WHERE n = :w));
