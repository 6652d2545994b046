-- The load and fault tests' schema (tests/load.rs, tests/faults.rs): pgbench clients
-- work on keys through these functions, which write down, in the same transaction,
-- every key they mint and every audit entry they expect. Whatever committed is here,
-- whatever did not is not, so afterwards load.problems() and load.unverifiable() can
-- compare the extension's tables against it.
CREATE SCHEMA load;

-- Every key minted here (issued or rotated), with its full text.
CREATE TABLE load.minted (key_id uuid PRIMARY KEY, key text NOT NULL);
-- The key each (client, slot) works on now. A client touches only its own slots, so
-- no two clients race on a key and the outcome of every call can be predicted.
CREATE TABLE load.slots (
    client int,
    slot int,
    key_id uuid NOT NULL,
    PRIMARY KEY (client, slot)
);
-- One row per audit entry a committed operation must have produced.
CREATE TABLE load.expected_audit (
    key_id uuid NOT NULL,
    action text NOT NULL,
    old_status api_keys.key_status,
    new_status api_keys.key_status
);

-- A new key in a slot: issued, or rotated from `rotate_from` (grace 0: the old key is
-- revoked).
CREATE FUNCTION load.mint(client int, slot int, rotate_from uuid DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    m record;
BEGIN
    IF rotate_from IS NULL THEN
        SELECT * INTO STRICT m FROM api_keys.api_key_issue(
            format('load c%s s%s', client, slot), 'service', 'production', ARRAY['runs:read'],
            rate_limit_per_minute => 1000000000, rate_limit_per_hour => 1000000000);
        INSERT INTO load.expected_audit VALUES (m.id, 'issued', NULL, 'active');
    ELSE
        SELECT * INTO STRICT m FROM api_keys.api_key_rotate(rotate_from);
        INSERT INTO load.expected_audit VALUES
            (m.id, 'issued', NULL, 'active'),
            (rotate_from, 'rotated', 'active', 'active'),
            (rotate_from, 'revoked', 'active', 'revoked');
    END IF;
    INSERT INTO load.minted VALUES (m.id, m.key);
    INSERT INTO load.slots VALUES (client, slot, m.id)
        ON CONFLICT ON CONSTRAINT slots_pkey DO UPDATE SET key_id = excluded.key_id;
END $$;

-- What api_key_verify must answer for a minted key, from its row (or its absence).
CREATE FUNCTION load.expected_reason(id uuid) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT CASE k.status WHEN 'active' THEN 'ok' ELSE k.status::text END
                       FROM api_keys.keys k WHERE k.id = expected_reason.id), 'not_found')
$$;

-- Verify the key in a slot; raise when the answer does not follow from its row.
CREATE FUNCTION load.verify(client int, slot int) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    m load.minted;
    v record;
    expected text;
BEGIN
    SELECT mk.* INTO STRICT m FROM load.slots s JOIN load.minted mk USING (key_id)
     WHERE s.client = verify.client AND s.slot = verify.slot;
    SELECT * INTO STRICT v FROM api_keys.api_key_verify(m.key);
    expected := load.expected_reason(m.key_id);
    IF v.reason IS DISTINCT FROM expected OR v.valid IS DISTINCT FROM (expected = 'ok')
       OR (v.key_id IS NOT NULL) IS DISTINCT FROM v.valid THEN
        RAISE EXCEPTION 'slot (%, %): verify answered % (valid %), the key row says %',
            client, slot, v.reason, v.valid, expected;
    END IF;
    RETURN v.reason;
END $$;

-- One lifecycle change on the key in a slot, chosen by its status and `r` (1..100).
-- Terminal keys (and deleted ones) are replaced by a new key in the slot.
CREATE FUNCTION load.lifecycle(client int, slot int, r int) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    kid uuid;
    st api_keys.key_status;
    op text;
BEGIN
    SELECT s.key_id INTO STRICT kid FROM load.slots s
     WHERE s.client = lifecycle.client AND s.slot = lifecycle.slot;
    SELECT k.status INTO STRICT st FROM api_keys.keys k WHERE k.id = kid;
    op := CASE
        WHEN st = 'active' AND r <= 30 THEN 'suspend'
        WHEN st = 'active' AND r <= 55 THEN 'update'
        WHEN st = 'active' AND r <= 70 THEN 'rotate'
        WHEN st = 'active' AND r <= 80 THEN 'revoke'
        WHEN st = 'active' AND r <= 90 THEN 'expire'
        WHEN st = 'active' THEN 'delete'
        WHEN st = 'suspended' AND r <= 70 THEN 'reactivate'
        WHEN st = 'suspended' AND r <= 85 THEN 'revoke'
        WHEN st = 'suspended' THEN 'delete'
        ELSE 'replace'
    END;
    CASE op
    WHEN 'suspend' THEN
        PERFORM api_keys.api_key_suspend(kid, 'load');
        INSERT INTO load.expected_audit VALUES (kid, 'suspended', st, 'suspended');
    WHEN 'update' THEN
        PERFORM api_keys.api_key_update(kid, description => gen_random_uuid()::text);
        INSERT INTO load.expected_audit VALUES (kid, 'updated', st, st);
    WHEN 'rotate' THEN
        PERFORM load.mint(client, slot, kid);
    WHEN 'revoke' THEN
        PERFORM api_keys.api_key_revoke(kid, 'load');
        INSERT INTO load.expected_audit VALUES (kid, 'revoked', st, 'revoked');
    WHEN 'expire' THEN
        PERFORM api_keys.api_key_set_status(kid, 'expired');
        INSERT INTO load.expected_audit VALUES (kid, 'expired', st, 'expired');
    WHEN 'reactivate' THEN
        PERFORM api_keys.api_key_reactivate(kid);
        INSERT INTO load.expected_audit VALUES (kid, 'reactivated', st, 'active');
    WHEN 'delete' THEN
        PERFORM api_keys.api_key_delete(kid);
        INSERT INTO load.expected_audit VALUES (kid, 'deleted', st, NULL);
        PERFORM load.mint(client, slot);
    ELSE
        PERFORM load.mint(client, slot);
    END CASE;
    RETURN op;
END $$;

-- Everything that is half-written or inconsistent between the key table, the audit
-- log and what committed operations wrote down; empty when all is well.
CREATE FUNCTION load.problems() RETURNS SETOF text
LANGUAGE sql STABLE AS $$
    -- Every key row has exactly one 'issued' entry.
    SELECT format('key %s has %s issued entries', k.prefix, count(a.id))
      FROM api_keys.keys k
      LEFT JOIN api_keys.audit_log a ON a.key_id = k.id AND a.action = 'issued'
     GROUP BY k.id, k.prefix HAVING count(a.id) <> 1
    UNION ALL
    -- Every 'issued' entry has its key row, or a 'deleted' entry.
    SELECT format('issued entry for %s: no key row and no deleted entry', a.prefix)
      FROM api_keys.audit_log a
     WHERE a.action = 'issued'
       AND NOT EXISTS (SELECT FROM api_keys.keys k WHERE k.id = a.key_id)
       AND NOT EXISTS (SELECT FROM api_keys.audit_log d
                        WHERE d.key_id = a.key_id AND d.action = 'deleted')
    UNION ALL
    -- A key's last entry leaves it in the status it has.
    SELECT format('key %s is %s, its last audit entry (%s) says %s',
                  k.prefix, k.status, last.action, last.new_status)
      FROM api_keys.keys k
     CROSS JOIN LATERAL (SELECT a.action, a.new_status FROM api_keys.audit_log a
                          WHERE a.key_id = k.id ORDER BY a.id DESC LIMIT 1) last
     WHERE last.new_status IS DISTINCT FROM k.status
    UNION ALL
    -- A rotated key's predecessor has the 'rotated' entry that names it.
    SELECT format('key %s was rotated from %s, which has no rotated entry naming it',
                  k.prefix, k.rotated_from)
      FROM api_keys.keys k
     WHERE k.rotated_from IS NOT NULL
       AND NOT EXISTS (SELECT FROM api_keys.audit_log a
                        WHERE a.key_id = k.rotated_from AND a.action = 'rotated'
                          AND a.details ->> 'new_key_id' = k.id::text)
    UNION ALL
    -- Key rows and committed mints are the same set, less what was deleted.
    SELECT format('key %s exists but no committed call minted it', k.prefix)
      FROM api_keys.keys k
     WHERE NOT EXISTS (SELECT FROM load.minted m WHERE m.key_id = k.id)
    UNION ALL
    SELECT format('minted key %s has no key row and no deleted entry', m.key_id)
      FROM load.minted m
     WHERE NOT EXISTS (SELECT FROM api_keys.keys k WHERE k.id = m.key_id)
       AND NOT EXISTS (SELECT FROM api_keys.audit_log d
                        WHERE d.key_id = m.key_id AND d.action = 'deleted')
    UNION ALL
    -- The audit entries are exactly those the committed operations expected: key,
    -- action and both statuses, none missing, none extra.
    (SELECT format('audit entry without a committed operation: %s %s (%s -> %s)',
                   key_id, action, old_status, new_status)
       FROM (SELECT key_id, action, old_status, new_status FROM api_keys.audit_log
             EXCEPT ALL
             SELECT key_id, action, old_status, new_status FROM load.expected_audit) extra
      LIMIT 20)
    UNION ALL
    (SELECT format('committed operation without its audit entry: %s %s (%s -> %s)',
                   key_id, action, old_status, new_status)
       FROM (SELECT key_id, action, old_status, new_status FROM load.expected_audit
             EXCEPT ALL
             SELECT key_id, action, old_status, new_status FROM api_keys.audit_log) missing
      LIMIT 20)
    UNION ALL
    -- Every stored hash is a whole argon2id PHC string.
    SELECT format('key %s has a malformed hash', k.prefix)
      FROM api_keys.keys k
     WHERE k.secret_hash !~ '^\$argon2id\$v=19\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+$'
$$;

-- Every minted key, verified now: those whose answer does not follow from the key row.
CREATE FUNCTION load.unverifiable() RETURNS SETOF text
LANGUAGE sql VOLATILE AS $$
    SELECT format('key %s: verify answered %s, the key row says %s', m.key_id, v.reason, e.reason)
      FROM load.minted m
     CROSS JOIN LATERAL api_keys.api_key_verify(m.key) v
     CROSS JOIN LATERAL (SELECT load.expected_reason(m.key_id) AS reason) e
     WHERE v.reason IS DISTINCT FROM e.reason OR v.valid IS DISTINCT FROM (e.reason = 'ok')
$$;

-- `len` random bytes, none of them NUL (the only byte text cannot hold). Only in a
-- SQL_ASCII database, which stores any other byte as it is.
CREATE FUNCTION load.random_bytes(len int) RETURNS text
LANGUAGE sql VOLATILE AS $$
    SELECT coalesce(convert_from(decode(string_agg(lpad(to_hex(1 + floor(random() * 255)::int), 2, '0'), ''),
                                        'hex'), 'SQL_ASCII'), '')
      FROM generate_series(1, len)
$$;

-- One hostile call of api_key_verify (random_bytes.sql), chosen by `kind` (1..100);
-- raises when the answer breaks the contract. A changed key must never be accepted.
CREATE FUNCTION load.fuzz_verify(kind int, len int) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    real text := (SELECT key FROM load.minted ORDER BY random() LIMIT 1);
    presented text;
    scope text;
    ip inet;
    v record;
BEGIN
    IF kind <= 30 THEN      -- any bytes
        presented := load.random_bytes(len);
    ELSIF kind <= 55 THEN   -- one byte of a real key replaced
        presented := overlay(real PLACING load.random_bytes(1)
                             FROM 1 + floor(random() * length(real))::int FOR 1);
    ELSIF kind <= 65 THEN   -- a real key cut short
        presented := left(real, len % length(real));
    ELSIF kind <= 75 THEN   -- a real key with bytes after it
        presented := real || load.random_bytes(1 + len);
    ELSIF kind <= 99 THEN   -- a real key with a random scope and client address
        presented := real;
        scope := load.random_bytes(len % 64);
        ip := CASE floor(random() * 3)
                  WHEN 0 THEN '0.0.0.0'::inet + floor(random() * 4294967295)::bigint
                  WHEN 1 THEN '2001:db8::'::inet + floor(random() * 1e18)::bigint
              END;
    ELSE                    -- huge
        presented := load.random_bytes(10000 + 100 * len);
    END IF;
    SELECT * INTO STRICT v FROM api_keys.api_key_verify(presented, ip, scope);
    IF v.valid IS DISTINCT FROM (v.reason = 'ok')
       OR (v.key_id IS NOT NULL) IS DISTINCT FROM v.valid
       OR v.reason NOT IN ('ok', 'malformed', 'not_found', 'invalid_secret', 'suspended',
                           'revoked', 'expired', 'ip_not_allowed', 'insufficient_scope',
                           'rate_limited')
       OR (v.valid AND presented IS DISTINCT FROM real)
       OR (kind BETWEEN 76 AND 99 AND v.reason NOT IN ('ok', 'insufficient_scope', 'ip_not_allowed'))
    THEN
        RAISE EXCEPTION 'kind %, % bytes: verify answered % (valid %, key_id %)',
            kind, length(presented), v.reason, v.valid, v.key_id;
    END IF;
    RETURN v.reason;
END $$;
