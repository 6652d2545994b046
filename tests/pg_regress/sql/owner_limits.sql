\set ON_ERROR_ROLLBACK on
\set SHOW_CONTEXT never
-- Owner limits: rate limits shared by all keys of an owner, set by admins with
-- api_key_set_owner_limits, copied into every key of the owner (existing, issued,
-- rotated, moved to the owner) and audited once per change, never per key.
begin;
SET search_path = api_keys, public;
SET api_keys.argon2_memory_kib = 64;
SET api_keys.argon2_iterations = 1;
CREATE ROLE regress_alice;
CREATE ROLE regress_bob;
CREATE ROLE regress_admin IN ROLE api_keys_admin;

SET ROLE regress_alice;
SELECT id AS a1_id FROM api_key_issue('alice one', 'service', 'production') \gset
SELECT id AS a2_id FROM api_key_issue('alice two', 'user', 'development', rate_limit_per_minute => 10) \gset
RESET ROLE;
SELECT id AS b1_id FROM api_key_issue('bob one', 'service', 'production', owner => 'regress_bob') \gset
SELECT name, owner_rate_limit_per_minute, owner_rate_limit_per_hour FROM key_list ORDER BY name;

-- admins only: a plain role gets 42501, and neither reads nor writes the table
SET ROLE regress_alice;
SELECT regress.expect_error('SELECT api_key_set_owner_limits(''regress_alice'', 1000)');
SELECT regress.expect_error('SELECT * FROM api_keys.owner_limits');
SELECT regress.expect_error('INSERT INTO api_keys.owner_limits VALUES (''regress_alice'', 1, 1, now(), ''me'')');
RESET ROLE;
SET ROLE regress_bob;
SELECT regress.expect_error('SELECT api_key_set_owner_limits(''regress_bob'', NULL, NULL)');
RESET ROLE;

-- bounds: 22023 naming the field, with a hint; nothing written
SET ROLE regress_admin;
SELECT label, regress.expect_error(stmt) FROM (VALUES
    ('no owner', 'SELECT api_key_set_owner_limits(NULL, 100)'),
    ('empty owner', 'SELECT api_key_set_owner_limits('''', 100)'),
    ('blank owner', 'SELECT api_key_set_owner_limits(''  '', 100)'),
    ('long owner', format('SELECT api_key_set_owner_limits(%L, 100)', repeat('o', 201))),
    ('zero per minute', 'SELECT api_key_set_owner_limits(''regress_alice'', 0, 1000)'),
    ('negative per hour', 'SELECT api_key_set_owner_limits(''regress_alice'', 10, -1)')
  ) AS t(label, stmt);
SELECT count(*) AS limits FROM api_keys.owner_limits;

-- set: the limits and how many keys carry them; every key of the owner, none of others
SELECT * FROM api_key_set_owner_limits('regress_alice', 100, 2000);
SELECT name, rate_limit_per_minute, owner_rate_limit_per_minute, owner_rate_limit_per_hour
  FROM api_keys.key_list ORDER BY name;
SELECT owner, rate_limit_per_minute, rate_limit_per_hour, updated_by,
       updated_at = now() AS updated_now
  FROM api_keys.owner_limits;
RESET ROLE;

-- keys issued, rotated or moved to the owner later copy the owner's limits
SET ROLE regress_alice;
SELECT id AS a3_id FROM api_key_issue('alice three', 'service', 'production') \gset
SELECT id AS a4_id FROM api_key_rotate(:'a1_id'::uuid, '1 hour') \gset
SELECT name, owner_rate_limit_per_minute, owner_rate_limit_per_hour
  FROM key_list ORDER BY name, id = :'a4_id';
RESET ROLE;
SET ROLE regress_admin;
UPDATE api_keys.keys SET owner = 'regress_alice' WHERE id = :'b1_id';
UPDATE api_keys.keys SET name = 'bob one, renamed' WHERE id = :'b1_id';
SELECT name, owner, owner_rate_limit_per_minute, owner_rate_limit_per_hour
  FROM api_keys.key_list WHERE id = :'b1_id';
-- and a key moved away from the owner loses them
UPDATE api_keys.keys SET owner = 'regress_bob' WHERE id = :'b1_id';
SELECT name, owner, owner_rate_limit_per_minute, owner_rate_limit_per_hour
  FROM api_keys.key_list WHERE id = :'b1_id';

-- a change: both windows are given each time (NULL: none for that window)
SELECT * FROM api_key_set_owner_limits('regress_alice', rate_limit_per_hour => 5000);
SELECT name, status, owner_rate_limit_per_minute, owner_rate_limit_per_hour
  FROM api_keys.key_list WHERE owner = 'regress_alice' ORDER BY name, status;
-- an owner with no key yet: the limits wait for its first
SELECT * FROM api_key_set_owner_limits('regress_carol', 1);
SELECT id AS c1_id FROM api_key_issue('carol one', 'service', 'production', owner => 'regress_carol') \gset
SELECT name, owner_rate_limit_per_minute, owner_rate_limit_per_hour
  FROM api_keys.key_list WHERE id = :'c1_id';
-- removal: both NULL; the keys carry none
SELECT * FROM api_key_set_owner_limits('regress_alice');
SELECT count(*) AS alice_limits FROM api_keys.owner_limits WHERE owner = 'regress_alice';
SELECT name, owner_rate_limit_per_minute, owner_rate_limit_per_hour
  FROM api_keys.key_list WHERE owner = 'regress_alice' ORDER BY name;
-- removing limits an owner does not have changes nothing
SELECT * FROM api_key_set_owner_limits('regress_nobody');
RESET ROLE;

-- the audit: one 'owner_limits_changed' entry per call, of no key; the copies make no
-- 'updated' entries (the owner changes above made theirs, and the rename)
SELECT action, key_id, prefix, actor, old_status, new_status, details
  FROM audit_log WHERE action = 'owner_limits_changed' ORDER BY id;
SELECT k.name, a.action, a.actor,
       (SELECT array_agg(c ORDER BY c) FROM jsonb_object_keys(a.details) c) AS changed
  FROM audit_log a JOIN keys k ON k.id = a.key_id
 WHERE a.action = 'updated' ORDER BY a.id;
SELECT details FROM audit_log WHERE key_id = :'b1_id' AND action = 'updated' AND details ? 'owner' ORDER BY id;
-- admins read the entries in key_audit; owners do not (they are no key's)
SET ROLE regress_admin;
SELECT count(*) AS admin_reads FROM api_keys.key_audit WHERE action = 'owner_limits_changed';
RESET ROLE;
SET ROLE regress_alice;
SELECT count(*) AS owner_reads FROM api_keys.key_audit WHERE action = 'owner_limits_changed';
RESET ROLE;

-- a superuser's direct writes to the table (a restore's) are copied into the keys too
INSERT INTO owner_limits (owner, rate_limit_per_minute, rate_limit_per_hour, updated_by)
VALUES ('regress_alice', 7, NULL, 'restore');
SELECT name, owner_rate_limit_per_minute, owner_rate_limit_per_hour
  FROM key_list WHERE owner = 'regress_alice' ORDER BY name;
UPDATE owner_limits SET rate_limit_per_hour = 70 WHERE owner = 'regress_alice';
UPDATE owner_limits SET owner = 'regress_bob' WHERE owner = 'regress_alice';
SELECT owner, count(*) AS keys, min(owner_rate_limit_per_minute) AS per_minute, min(owner_rate_limit_per_hour) AS per_hour
  FROM key_list GROUP BY owner ORDER BY owner;
DELETE FROM owner_limits;
SELECT owner, count(*) AS keys, min(owner_rate_limit_per_minute) AS per_minute, min(owner_rate_limit_per_hour) AS per_hour
  FROM key_list GROUP BY owner ORDER BY owner;
SELECT regress.expect_error('INSERT INTO api_keys.owner_limits (owner, updated_by) VALUES (''regress_alice'', ''x'')');
-- (direct writes are not audited: the five entries above)
SELECT count(*) AS entries FROM audit_log WHERE action = 'owner_limits_changed';
rollback;

-- The limits are copied into keys committed meanwhile only if the call sees them: it
-- runs at READ COMMITTED only (25000 otherwise).
begin isolation level repeatable read;
SELECT regress.expect_error('SELECT api_keys.api_key_set_owner_limits(''regress_alice'', 100)');
rollback;
