-- A small PostgREST API authorized by API keys: projects and their runs, with
-- row-level security by scope and by owner.
--   psql -h /tmp/api_keys_run -p 5433 -U postgres -f examples/postgrest/schema.sql
-- Safe to run again, in this database or in another one of the cluster: the schema
-- `api` is dropped and made anew; the roles are cluster-wide and may hold privileges
-- in other databases, so they are created when missing and never dropped. All of it
-- is one transaction: a failure leaves the database as it was.
\set ON_ERROR_STOP on
BEGIN;
-- Quiet on a second run: "already a member", "drop cascades to ...".
SET LOCAL client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS api_keys;

-- PostgREST logs in as `authenticator` and switches to `web_anon` for each request
-- (there is no JWT: the API key is the credential). authenticate() runs as web_anon,
-- so web_anon is a verifier; it still cannot list, read or change any key.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'authenticator') THEN
        CREATE ROLE authenticator LOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'web_anon') THEN
        CREATE ROLE web_anon NOLOGIN;
    END IF;
END
$roles$;
GRANT web_anon TO authenticator;
GRANT api_keys_verifier TO web_anon;

DROP SCHEMA IF EXISTS api CASCADE;
CREATE SCHEMA api;
GRANT USAGE ON SCHEMA api TO web_anon;

CREATE TABLE api.projects (
    id    int PRIMARY KEY,
    name  text NOT NULL,
    owner text NOT NULL
);
CREATE TABLE api.runs (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id int NOT NULL REFERENCES api.projects,
    status     text NOT NULL DEFAULT 'queued',
    -- The key's owner, stamped by the database, not taken from the request body.
    created_by text NOT NULL DEFAULT api_keys.current_owner()
);
GRANT SELECT ON api.projects, api.runs TO web_anon;
GRANT INSERT (project_id, status) ON api.runs TO web_anon;
GRANT DELETE ON api.runs TO web_anon;

ALTER TABLE api.projects ENABLE ROW LEVEL SECURITY;
ALTER TABLE api.runs ENABLE ROW LEVEL SECURITY;

-- Policies. `(SELECT api_keys.has_scope('…'))` is evaluated once per statement (an
-- initplan); a check that depends on the row, like the project filter, runs per row.
-- Projects: a key sees the projects of its owner, or every project with projects:read.
CREATE POLICY projects_read ON api.projects FOR SELECT
    USING (owner OPERATOR(pg_catalog.=) (SELECT api_keys.current_owner())
           OR (SELECT api_keys.has_scope('projects:read')));
-- Runs: all of them with runs:read, one project's with projects/<id>/runs:read
-- (granted by projects/<id>/*:read), and those the key's owner created.
CREATE POLICY runs_read ON api.runs FOR SELECT
    USING ((SELECT api_keys.has_scope('runs:read'))
           OR api_keys.has_scope(pg_catalog.format('projects/%s/runs:read', project_id))
           OR created_by OPERATOR(pg_catalog.=) (SELECT api_keys.current_owner()));
-- New runs: with runs:write or projects/<id>/runs:write, stamped with the key's owner.
CREATE POLICY runs_insert ON api.runs FOR INSERT
    WITH CHECK (((SELECT api_keys.has_scope('runs:write'))
                 OR api_keys.has_scope(pg_catalog.format('projects/%s/runs:write', project_id)))
                AND created_by OPERATOR(pg_catalog.=) (SELECT api_keys.current_owner()));
-- Deleting: only runs the key's owner created, with runs:delete.
CREATE POLICY runs_delete ON api.runs FOR DELETE
    USING ((SELECT api_keys.has_scope('runs:delete'))
           AND created_by OPERATOR(pg_catalog.=) (SELECT api_keys.current_owner()));

INSERT INTO api.projects VALUES (42, 'checkout', 'alice'), (43, 'search', 'bob');
INSERT INTO api.runs (project_id, status, created_by) VALUES
    (42, 'passed', 'alice'), (42, 'failed', 'bob'), (43, 'passed', 'bob');
COMMIT;
