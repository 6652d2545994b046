-- The lifecycle: transition rules, the guard trigger that holds every UPDATE to them,
-- the status changes (suspend, reactivate, revoke, set_status, delete) and expiry.
-- Each public function is an entry point into its _impl_ version (src/sql_api/
-- as_caller.rs), so that it acts for the role at its call site.

-- The lifecycle rules, in one place. Called by the lifecycle functions (for a clear
-- message before any write) and by the guard trigger (for direct UPDATEs by admins).
CREATE FUNCTION api_keys._check_transition(k api_keys.keys, target api_keys.key_status)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    effective api_keys.key_status := api_keys._effective_status(k.status, k.expires_at);
BEGIN
    IF target IS NULL THEN
        RAISE EXCEPTION 'status must not be NULL' USING ERRCODE = 'invalid_parameter_value';
    ELSIF k.status = 'revoked' THEN
        RAISE EXCEPTION 'key % is revoked; a revoked key cannot become %', k.prefix, target
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Revocation is final. Issue a new key instead.';
    ELSIF target = 'revoked' THEN
        RETURN;
    ELSIF effective = 'expired' THEN
        IF target = 'expired' AND k.status <> 'expired' THEN
            RETURN;  -- recording an expiry that has already happened
        END IF;
        RAISE EXCEPTION 'key % has expired; an expired key cannot become %', k.prefix, target
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Expiry is final. Issue a new key instead.';
    ELSIF target = k.status THEN
        RAISE EXCEPTION 'key % is already %', k.prefix, target
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    -- Left: active <-> suspended, and active/suspended -> expired (ends the key now).
END
$$;

-- Revoked and expired keys are frozen: one message for the functions and the guard.
CREATE FUNCTION api_keys._check_editable(k api_keys.keys) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    effective api_keys.key_status := api_keys._effective_status(k.status, k.expires_at);
BEGIN
    IF effective IN ('revoked', 'expired') THEN
        RAISE EXCEPTION 'key % is %; it can no longer be changed', k.prefix, effective
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Issue a new key instead.';
    END IF;
END
$$;

-- BEFORE UPDATE: immutable columns, lifecycle rules, scope grammar, terminal keys.
CREATE FUNCTION api_keys._keys_guard() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF (NEW.id, NEW.prefix, NEW.secret_hash, NEW.created_at, NEW.created_by,
        NEW.key_type, NEW.environment, NEW.rotated_from, NEW.signing_key)
       IS DISTINCT FROM
       (OLD.id, OLD.prefix, OLD.secret_hash, OLD.created_at, OLD.created_by,
        OLD.key_type, OLD.environment, OLD.rotated_from, OLD.signing_key) THEN
        RAISE EXCEPTION 'id, prefix, secret_hash, created_at, created_by, key_type, environment, rotated_from and signing_key of key % cannot be changed', OLD.prefix
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Rotate the key (api_key_rotate) for a new secret, or issue a new key.';
    END IF;
    -- Terminal keys: nothing but a revocation (of an expired key) may change, and that
    -- only in status and status_reason.
    IF (NEW.name, NEW.description, NEW.owner, NEW.scopes, NEW.allowed_cidrs,
        NEW.expires_at, NEW.rate_limit_per_minute, NEW.rate_limit_per_hour, NEW.metadata,
        NEW.uses_granted, NEW.uses_from, NEW.refill_amount, NEW.refill_interval)
       IS DISTINCT FROM
       (OLD.name, OLD.description, OLD.owner, OLD.scopes, OLD.allowed_cidrs,
        OLD.expires_at, OLD.rate_limit_per_minute, OLD.rate_limit_per_hour, OLD.metadata,
        OLD.uses_granted, OLD.uses_from, OLD.refill_amount, OLD.refill_interval)
       OR (NEW.status IS NOT DISTINCT FROM OLD.status
           AND NEW.status_reason IS DISTINCT FROM OLD.status_reason) THEN
        PERFORM api_keys._check_editable(OLD);
    END IF;
    -- The uses spent are the workers' (they write with triggers off), the owner's limits
    -- the copy triggers' (keys_owner_limits, owner_limits_copy). A change of the credits
    -- (the functions mark one by a new uses_from) starts a new period, now.
    NEW.uses_period := OLD.uses_period;
    NEW.uses_spent := OLD.uses_spent;
    NEW.owner_rate_limit_per_minute := OLD.owner_rate_limit_per_minute;
    NEW.owner_rate_limit_per_hour := OLD.owner_rate_limit_per_hour;
    IF (NEW.uses_granted, NEW.uses_from, NEW.refill_amount, NEW.refill_interval)
       IS DISTINCT FROM
       (OLD.uses_granted, OLD.uses_from, OLD.refill_amount, OLD.refill_interval) THEN
        NEW.uses_from := CASE WHEN NEW.uses_granted IS NOT NULL THEN clock_timestamp() END;
        NEW.uses_period := NULL;
        NEW.uses_spent := 0;
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        PERFORM api_keys._check_transition(OLD, NEW.status);
        IF NEW.status = 'revoked' AND coalesce(btrim(NEW.status_reason), '') = '' THEN
            RAISE EXCEPTION 'status_reason is required to revoke key %', OLD.prefix
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'UPDATE api_keys.keys SET status = ''revoked'', status_reason = ''why'' ...';
        END IF;
        NEW.status_changed_at := now();
        IF NEW.status = 'expired' AND (NEW.expires_at IS NULL OR NEW.expires_at > now()) THEN
            NEW.expires_at := now();
        END IF;
    END IF;
    -- Ending a key goes through its status (and is audited as such), not a past date,
    -- also when the same UPDATE changes the status.
    IF NEW.expires_at IS DISTINCT FROM OLD.expires_at AND NEW.status <> 'expired' THEN
        NEW.expires_at := api_keys._check_expiry(NEW.expires_at);
    END IF;
    PERFORM api_keys._check_bounds(NEW, OLD);
    IF NEW.allowed_cidrs IS DISTINCT FROM OLD.allowed_cidrs THEN
        NEW.allowed_cidrs := api_keys._check_cidrs(NEW.allowed_cidrs);
    END IF;
    IF NEW.scopes IS DISTINCT FROM OLD.scopes THEN
        NEW.scopes := api_keys._check_scopes(NEW.scopes, true);
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER keys_guard BEFORE UPDATE ON api_keys.keys
    FOR EACH ROW EXECUTE FUNCTION api_keys._keys_guard();

-- Keys and their owner's limits: a change of the limits takes the owner's row of
-- api_keys.owner_registry (updating it), a copy into a key takes it shared, so each
-- waits for the other. At READ COMMITTED a key then reads the limits committed before
-- it; at REPEATABLE READ or SERIALIZABLE a key whose snapshot predates a change of its
-- owner's limits fails with 40001 (the row was changed, or made, since the snapshot),
-- instead of copying limits its snapshot no longer shows. Row locks on a private table,
-- which no role can take on its own.
CREATE FUNCTION api_keys._lock_owner(of_owner text, for_change boolean) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO api_keys.owner_registry AS r (owner) VALUES (of_owner)
    ON CONFLICT ON CONSTRAINT owner_registry_pkey DO NOTHING;
    IF for_change THEN
        UPDATE api_keys.owner_registry r SET limits_changed_at = clock_timestamp()
         WHERE r.owner = of_owner;
    ELSE
        PERFORM FROM api_keys.owner_registry r WHERE r.owner = of_owner FOR SHARE;
    END IF;
END $$;

-- BEFORE INSERT, and UPDATE OF owner: the owner's limits into the key.
CREATE FUNCTION api_keys._keys_owner_limits() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.owner IS NOT DISTINCT FROM OLD.owner THEN
        RETURN NEW;
    END IF;
    PERFORM api_keys._lock_owner(NEW.owner, false);
    SELECT l.rate_limit_per_minute, l.rate_limit_per_hour
      INTO NEW.owner_rate_limit_per_minute, NEW.owner_rate_limit_per_hour
      FROM api_keys.owner_limits l WHERE l.owner = NEW.owner;
    RETURN NEW;
END $$;

CREATE TRIGGER keys_owner_limits BEFORE INSERT OR UPDATE OF owner ON api_keys.keys
    FOR EACH ROW EXECUTE FUNCTION api_keys._keys_owner_limits();

-- The owner's current limits into each of its keys that lacks them. A copy is no edit
-- for keys_guard to judge nor keys_audit to record: triggers are off.
CREATE FUNCTION api_keys._copy_owner_limits(key_owner text) RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET session_replication_role = replica
AS $$
    UPDATE api_keys.keys k
       SET owner_rate_limit_per_minute = l.per_minute,
           owner_rate_limit_per_hour = l.per_hour
      FROM (SELECT max(o.rate_limit_per_minute) AS per_minute, max(o.rate_limit_per_hour) AS per_hour
              FROM api_keys.owner_limits o
             WHERE o.owner = _copy_owner_limits.key_owner) l
     WHERE k.owner = _copy_owner_limits.key_owner
       AND (k.owner_rate_limit_per_minute, k.owner_rate_limit_per_hour)
           IS DISTINCT FROM (l.per_minute, l.per_hour)
$$;

-- AFTER each change of api_keys.owner_limits (also a restore's, whichever table it
-- loads first): the limits into the owner's keys.
CREATE FUNCTION api_keys._owner_limits_copy() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Keys being issued for the owner finish first; later ones wait for this change.
    IF TG_OP <> 'INSERT' THEN
        PERFORM api_keys._lock_owner(OLD.owner, true);
        PERFORM api_keys._copy_owner_limits(OLD.owner);
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.owner <> OLD.owner) THEN
        PERFORM api_keys._lock_owner(NEW.owner, true);
        PERFORM api_keys._copy_owner_limits(NEW.owner);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER owner_limits_copy AFTER INSERT OR UPDATE OR DELETE ON api_keys.owner_limits
    FOR EACH ROW EXECUTE FUNCTION api_keys._owner_limits_copy();

-- api_key_set_owner_limits (admins): set, change or (both NULL) remove the limits all
-- keys of `owner` share; returns them with the number of keys that carry them. One
-- audit entry ('owner_limits_changed', no key); the keys' copies are not audited.
CREATE FUNCTION api_keys._set_owner_limits(of_owner text, per_minute integer, per_hour integer)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    owned integer;
BEGIN
    -- Before the owner is trimmed or named in a message.
    PERFORM api_keys._check_length('owner', of_owner, 200);
    IF of_owner IS NULL OR btrim(of_owner) = '' THEN
        RAISE EXCEPTION 'owner must not be empty' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Name the owner whose keys share the limits, as api_keys.key_list shows it.';
    ELSIF per_minute <= 0 OR per_hour <= 0 THEN
        RAISE EXCEPTION '% must be positive (got %)',
                        CASE WHEN per_minute <= 0 THEN 'rate_limit_per_minute' ELSE 'rate_limit_per_hour' END,
                        CASE WHEN per_minute <= 0 THEN per_minute ELSE per_hour END
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Leave it NULL for no owner limit of that window; both NULL remove the owner''s limits.';
    END IF;
    -- The copy must see every key committed before the owner's row was locked.
    PERFORM api_keys._require_read_committed('api_key_set_owner_limits()');
    IF per_minute IS NULL AND per_hour IS NULL THEN
        DELETE FROM api_keys.owner_limits l WHERE l.owner = of_owner;
    ELSE
        INSERT INTO api_keys.owner_limits AS l
               (owner, rate_limit_per_minute, rate_limit_per_hour, updated_at, updated_by)
        VALUES (of_owner, per_minute, per_hour, now(), api_keys._caller())
        ON CONFLICT ON CONSTRAINT owner_limits_pkey DO UPDATE
           SET rate_limit_per_minute = EXCLUDED.rate_limit_per_minute,
               rate_limit_per_hour = EXCLUDED.rate_limit_per_hour,
               updated_at = EXCLUDED.updated_at,
               updated_by = EXCLUDED.updated_by;
    END IF;
    -- The trigger owner_limits_copy has locked the owner's row and copied the limits
    -- into its keys.
    SELECT count(*) INTO owned FROM api_keys.keys k WHERE k.owner = of_owner;
    PERFORM api_keys._audit('owner_limits_changed', NULL::api_keys.keys, NULL, NULL, NULL,
                            jsonb_build_object('owner', of_owner, 'rate_limit_per_minute', per_minute,
                                               'rate_limit_per_hour', per_hour, 'keys', owned));
    RETURN owned;
END $$;

-- SQL, not PL/pgSQL: input and output columns share names, as the contract's do.
CREATE FUNCTION api_keys._impl_api_key_set_owner_limits(owner text, rate_limit_per_minute integer,
                                                        rate_limit_per_hour integer)
RETURNS TABLE (owner text, rate_limit_per_minute integer, rate_limit_per_hour integer, keys integer)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT $1, $2, $3, api_keys._set_owner_limits($1, $2, $3)
$$;

CREATE FUNCTION api_keys.api_key_set_owner_limits(owner text, rate_limit_per_minute integer DEFAULT NULL,
                                                  rate_limit_per_hour integer DEFAULT NULL)
RETURNS TABLE (owner text, rate_limit_per_minute integer, rate_limit_per_hour integer, keys integer)
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'api_keys_as_caller';

COMMENT ON FUNCTION api_keys.api_key_set_owner_limits(text, integer, integer) IS
    'Admins: rate limits shared by all keys of an owner (both NULL: none); returns them and how many keys carry them.';

-- The key row for a lifecycle call, locked; P0002 when it does not exist or the caller
-- may not see it (the two are indistinguishable on purpose).
CREATE FUNCTION api_keys._key_for_update(key_id uuid) RETURNS api_keys.keys
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k api_keys.keys;
BEGIN
    IF key_id IS NULL THEN
        RAISE EXCEPTION 'key_id must not be NULL' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO k FROM api_keys.keys WHERE id = key_id FOR UPDATE;
    IF NOT FOUND OR (k.owner <> api_keys._caller() AND NOT api_keys._caller_is_admin()) THEN
        RAISE EXCEPTION 'no API key with id %', key_id
            USING ERRCODE = 'no_data_found',
                  HINT = 'The key does not exist, or it belongs to another owner.';
    END IF;
    RETURN k;
END $$;

CREATE FUNCTION api_keys._listed(key_id uuid) RETURNS api_keys.key_list
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM api_keys.key_list l WHERE l.id = key_id
$$;

-- One path for every status change: check, write (the triggers re-check and audit), show.
CREATE FUNCTION api_keys._change_status(key_id uuid, target api_keys.key_status, reason text)
RETURNS api_keys.key_list
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k api_keys.keys := api_keys._key_for_update(key_id);
BEGIN
    PERFORM api_keys._check_transition(k, target);
    UPDATE api_keys.keys SET status = target, status_reason = nullif(btrim(reason), '')
     WHERE id = k.id;
    RETURN api_keys._listed(k.id);
END $$;

CREATE FUNCTION api_keys._impl_api_key_suspend(key_id uuid, reason text)
RETURNS api_keys.key_list
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT api_keys._change_status(key_id, 'suspended', reason)
$$;

CREATE FUNCTION api_keys.api_key_suspend(key_id uuid, reason text DEFAULT NULL)
RETURNS api_keys.key_list
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'api_keys_as_caller';

CREATE FUNCTION api_keys._impl_api_key_reactivate(key_id uuid)
RETURNS api_keys.key_list
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT api_keys._change_status(key_id, 'active', NULL)
$$;

CREATE FUNCTION api_keys.api_key_reactivate(key_id uuid)
RETURNS api_keys.key_list
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'api_keys_as_caller';

CREATE FUNCTION api_keys._impl_api_key_revoke(key_id uuid, reason text)
RETURNS api_keys.key_list
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM api_keys._require_reason(reason);
    RETURN api_keys._change_status(key_id, 'revoked', reason);
END $$;

CREATE FUNCTION api_keys.api_key_revoke(key_id uuid, reason text)
RETURNS api_keys.key_list
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'api_keys_as_caller';

CREATE FUNCTION api_keys._impl_api_key_set_status(key_id uuid, status api_keys.key_status, reason text)
RETURNS api_keys.key_list
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF status = 'revoked' THEN
        PERFORM api_keys._require_reason(reason);
    END IF;
    RETURN api_keys._change_status(key_id, status, reason);
END $$;

CREATE FUNCTION api_keys.api_key_set_status(key_id uuid, status api_keys.key_status, reason text DEFAULT NULL)
RETURNS api_keys.key_list
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'api_keys_as_caller';

CREATE FUNCTION api_keys._impl_api_key_delete(key_id uuid)
RETURNS api_keys.key_list
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k api_keys.keys := api_keys._key_for_update(key_id);
    shown api_keys.key_list := api_keys._listed(k.id);
BEGIN
    DELETE FROM api_keys.keys WHERE id = k.id;  -- audited by the trigger
    RETURN shown;
END $$;

CREATE FUNCTION api_keys.api_key_delete(key_id uuid)
RETURNS api_keys.key_list
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'api_keys_as_caller';

CREATE FUNCTION api_keys._mark_expired(ids uuid[]) RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    marked integer;
BEGIN
    UPDATE api_keys.keys
       SET status = 'expired',
           status_reason = 'expires_at passed' -- not a suspension's reason
     WHERE id = ANY (ids);
    GET DIAGNOSTICS marked = ROW_COUNT;
    RETURN marked;
END $$;

-- Records expiries that have already happened (verify treats such keys as expired at
-- once regardless). Each key's status change goes through the guard and is audited
-- as 'expired' by the audit trigger. Never waits: a key a user's open transaction has
-- locked is left for the next call (SKIP LOCKED). One key that cannot be changed does
-- not hold up the others: when the one-statement pass fails, each key is tried in its
-- own subtransaction and the ones that fail are returned with their errors.
CREATE FUNCTION api_keys._expire_keys(OUT expired integer, OUT skipped uuid[], OUT errors text[])
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- Locked here for the rest of the transaction; rows a user holds are left out.
    due uuid[] := ARRAY(SELECT id FROM api_keys.keys
                         WHERE status IN ('active', 'suspended')
                           AND expires_at <= statement_timestamp()
                           FOR UPDATE SKIP LOCKED);
    one uuid;
BEGIN
    skipped := '{}';
    errors := '{}';
    BEGIN
        expired := api_keys._mark_expired(due);
        RETURN;
    EXCEPTION WHEN OTHERS THEN
        expired := 0;
    END;
    FOREACH one IN ARRAY due LOOP
        BEGIN
            expired := expired + api_keys._mark_expired(ARRAY[one]);
        EXCEPTION WHEN OTHERS THEN
            skipped := skipped || one;
            errors := errors || SQLERRM;
        END;
    END LOOP;
END $$;

CREATE FUNCTION api_keys._impl_expire_due() RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    SELECT * INTO STRICT r FROM api_keys._expire_keys();
    FOR i IN 1 .. cardinality(r.skipped) LOOP
        RAISE WARNING 'key % could not be marked expired: %', r.skipped[i], r.errors[i]
            USING HINT = 'It verifies as expired all the same; the other keys were marked.';
    END LOOP;
    RETURN r.expired;
END $$;

CREATE FUNCTION api_keys.expire_due() RETURNS integer
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'api_keys_as_caller';

COMMENT ON FUNCTION api_keys.expire_due() IS
    'Marks keys past expires_at as expired (audited); returns how many.';
