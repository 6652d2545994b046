-- Forged signed secrets for real prefixes: each key has a real prefix, a random secret,
-- the real signing key id of that prefix's key, a random 96-bit MAC and a valid
-- checksum, drawn from a pool of :nwrong precomputed keys spread evenly over all
-- prefixes. Refused as invalid_secret (and counted in forged_signatures) after one
-- HMAC, before any key row is read: no memo, no argon2, no budget.
\set w random(1, :nwrong)
SELECT * FROM api_keys.api_key_verify((SELECT key FROM bench.forged WHERE n = :w));
