-- Listing keys: api_key_list, an entry point into its _impl_ version.

CREATE FUNCTION api_keys._impl_api_key_list(
    status api_keys.key_status,
    environment api_keys.environment,
    search text,
    owner text,
    order_by text,
    page_size integer,
    page integer
) RETURNS SETOF api_keys.key_list
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    sortable CONSTANT text[] := ARRAY[
        'id', 'prefix', 'name', 'description', 'key_type', 'environment', 'owner', 'status',
        'status_reason', 'scopes', 'allowed_cidrs', 'expires_at', 'created_at', 'created_by',
        'last_used_at', 'last_used_ip', 'rotated_from', 'rate_limit_per_minute',
        'rate_limit_per_hour', 'metadata', 'remaining_uses', 'refill_amount', 'refill_interval',
        'refill_at', 'owner_rate_limit_per_minute', 'owner_rate_limit_per_hour'];
    words text[];
    pattern text;
BEGIN
    PERFORM api_keys._check_length('order_by', order_by, 100);
    PERFORM api_keys._check_length('search', search, 200);
    PERFORM api_keys._check_length('owner', owner, 200);
    words := regexp_split_to_array(lower(btrim(coalesce(order_by, ''))), '\s+');
    IF array_length(words, 1) NOT BETWEEN 1 AND 2 OR NOT (words[1] = ANY (sortable))
       OR coalesce(words[2], 'asc') NOT IN ('asc', 'desc') THEN
        RAISE EXCEPTION 'order_by "%" is not a column of api_keys.key_list with optional asc or desc', order_by
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Sortable columns: ' || array_to_string(sortable, ', ') || '.';
    ELSIF page_size IS NULL OR page_size NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'page_size must be between 1 and 1000 (got %)', page_size
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF page IS NULL OR page < 1 THEN
        RAISE EXCEPTION 'page must be 1 or more (got %)', page
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- search is literal text: escape LIKE's wildcards.
    pattern := '%' || replace(replace(replace(search, '\', '\\'), '%', '\%'), '_', '\_') || '%';
    RETURN QUERY EXECUTE format(
        'SELECT * FROM api_keys.key_list l
          WHERE ($1 IS NULL OR l.status = $1)
            AND ($2 IS NULL OR l.environment = $2)
            AND ($3 IS NULL OR l.name ILIKE $3 OR l.prefix ILIKE $3)
            AND ($4 IS NULL OR l.owner = $4)
          ORDER BY l.%I %s NULLS LAST, l.id
          LIMIT $5 OFFSET $6',
        words[1], coalesce(words[2], 'asc'))
    USING status, environment, pattern, owner, page_size, (page::bigint - 1) * page_size;
END $$;

CREATE FUNCTION api_keys.api_key_list(
    status api_keys.key_status DEFAULT NULL,
    environment api_keys.environment DEFAULT NULL,
    search text DEFAULT NULL,
    owner text DEFAULT NULL,
    order_by text DEFAULT 'created_at desc',
    page_size integer DEFAULT 50,
    page integer DEFAULT 1
) RETURNS SETOF api_keys.key_list
LANGUAGE c STABLE
AS 'MODULE_PATHNAME', 'api_keys_as_caller';
