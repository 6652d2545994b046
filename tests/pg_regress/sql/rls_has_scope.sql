\set ON_ERROR_ROLLBACK on
\set SHOW_CONTEXT never
-- Row-level security by scope and owner: policies that call has_scope with resource
-- filters (projects/42/*:read), current_owner, and the (SELECT ...) idiom that makes
-- the check an initplan, evaluated once per statement rather than once per row.
begin;
SET search_path = api_keys, public;
SET api_keys.argon2_memory_kib = 64;
SET api_keys.argon2_iterations = 1;

CREATE ROLE regress_web;
GRANT api_keys_verifier TO regress_web;
CREATE SCHEMA regress_app;
GRANT USAGE ON SCHEMA regress_app TO regress_web;
CREATE TABLE regress_app.runs (id int PRIMARY KEY, project int NOT NULL, owner text NOT NULL);
INSERT INTO regress_app.runs
SELECT i, 40 + i % 3, CASE WHEN i % 2 = 0 THEN 'alice' ELSE 'bob' END
  FROM generate_series(1, 12) AS i;
GRANT SELECT, INSERT ON regress_app.runs TO regress_web;
ALTER TABLE regress_app.runs ENABLE ROW LEVEL SECURITY;
-- read: the whole table with runs:read, or one project with projects/<n>/*:read
CREATE POLICY read_all ON regress_app.runs FOR SELECT
    USING ((SELECT api_keys.has_scope('runs:read')));
CREATE POLICY read_project ON regress_app.runs FOR SELECT
    USING (api_keys.has_scope(format('projects/%s/runs:read', project)));
-- write: only rows owned by the key's owner, with runs:write
CREATE POLICY write_own ON regress_app.runs FOR INSERT
    WITH CHECK ((SELECT api_keys.has_scope('runs:write'))
                AND owner OPERATOR(pg_catalog.=) (SELECT api_keys.current_owner()));

SELECT key AS reader FROM api_key_issue('reader', 'service', 'production', ARRAY['runs:read'], owner => 'alice') \gset
SELECT key AS p42 FROM api_key_issue('p42', 'service', 'production', ARRAY['projects/42/*:read'], owner => 'bob') \gset
SELECT key AS writer FROM api_key_issue('writer', 'service', 'production', ARRAY['runs:write'], owner => 'alice') \gset

SET ROLE regress_web;
-- anonymous: nothing
SELECT count(*) AS anonymous_sees FROM regress_app.runs;
-- runs:read sees every row
SELECT api_keys.login(:'reader') IS NOT NULL AS reader;
SELECT count(*) AS reader_sees FROM regress_app.runs;
-- projects/42/*:read sees project 42 only
SELECT api_keys.login(:'p42') IS NOT NULL AS p42;
SELECT project, count(*) FROM regress_app.runs GROUP BY project ORDER BY project;
-- runs:write inserts its own rows, not another owner's, and reads none
SELECT api_keys.login(:'writer') IS NOT NULL AS writer;
INSERT INTO regress_app.runs VALUES (100, 42, 'alice');
SELECT regress.expect_error($$INSERT INTO regress_app.runs VALUES (101, 42, 'bob')$$);
SELECT count(*) AS writer_sees FROM regress_app.runs;
-- the (SELECT ...) form of read_all is an initplan, called once per statement;
-- read_project depends on the row, so it is a per-row filter
EXPLAIN (COSTS OFF) SELECT * FROM regress_app.runs;
RESET ROLE;

-- has_scope and the other readers are STABLE and PARALLEL RESTRICTED (backend memory)
SELECT proname, provolatile, proparallel FROM pg_proc
 WHERE pronamespace = 'api_keys'::regnamespace
   AND proname IN ('has_scope', 'require_scope', 'current_key_id', 'current_owner')
 ORDER BY proname;
rollback;
