-- Flood of wrong secrets for keys issued before 0.5.0 (unsigned key rows): each key has
-- the real prefix of an unsigned key, a random 43-character secret and a valid checksum,
-- drawn from a pool of :nwrong precomputed keys spread evenly over all prefixes. The
-- path of unsigned keys: key row, memo, then argon2 within the per-prefix budget and the
-- server-wide allowance for suspect prefixes; over budget, invalid_secret unhashed.
\set w random(1, :nwrong)
SELECT * FROM api_keys.api_key_verify((SELECT key FROM bench.legacy_wrong WHERE n = :w));
