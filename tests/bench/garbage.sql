-- Key-shaped strings whose checksum is wrong: rejected as malformed by the parser,
-- before any table access or hashing.
\set n random(1, :nkeys)
SELECT * FROM api_keys.api_key_verify((SELECT garbage FROM bench.keys WHERE n = :n));
