-- Unsigned-shaped wrong secrets for signed keys: each key has a real prefix of a signed
-- key, a random 43-character secret with no signing key id or MAC (the shape of keys
-- issued before 0.5.0) and a valid checksum, drawn from a pool of :nwrong precomputed
-- keys spread evenly over all prefixes. The key row says the key is signed, so each is
-- refused as invalid_secret (and counted in forged_signatures) after the key row is
-- read: no memo, no argon2, no budget.
\set w random(1, :nwrong)
SELECT * FROM api_keys.api_key_verify((SELECT key FROM bench.wrong WHERE n = :w));
