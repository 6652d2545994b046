-- Hostile input through api_key_verify (tests/load.rs): random bytes, real keys with a
-- byte changed, cut short or extended, random scopes and addresses, huge strings.
\set kind random(1, 100)
\set len random(0, 300)
SELECT load.fuzz_verify(:kind, :len);
