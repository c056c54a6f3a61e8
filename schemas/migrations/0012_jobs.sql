-- 0012: persisted jobs of `refinery serve` (refinery/service/jobs.py, docs/SERVICE.md). One row per job: a CLI
-- command (ingest, scan, snapshot, train, eval, review push or pull, promote, rollback) that the server runs in a
-- child process, one at a time. Progress and the log live in files (<workspace>/jobs/<job_id>/), not here.
CREATE TABLE jobs (
    job_id      VARCHAR PRIMARY KEY,   -- job_ + 16 random hex digits
    kind        VARCHAR NOT NULL,      -- ingest, scan, snapshot, train, eval, review_push, review_pull, promote, rollback
    params_json VARCHAR NOT NULL,      -- the validated parameters of the kind (canonical JSON)
    state       VARCHAR NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    created_by  VARCHAR NOT NULL,      -- the name of the API token that submitted it (the child's $REFINERY_ACTOR)
    created_at  TIMESTAMP NOT NULL,
    started_at  TIMESTAMP,
    finished_at TIMESTAMP,
    pid         INTEGER,               -- the child process while it runs
    exit_code   INTEGER,               -- the CLI's exit code (0 done, 1 failed check, 2 wrong input; NULL: killed)
    result_json VARCHAR,               -- the CLI's --json output
    error       VARCHAR                -- one line: why it failed or was cancelled
);

-- Every job with how long it waited and ran (seconds; NULL while not started or not finished).
CREATE VIEW job_durations AS
SELECT job_id, kind, state, created_by, created_at,
       date_diff('millisecond', created_at, coalesce(started_at, finished_at)) / 1000.0 AS queued_s,
       date_diff('millisecond', started_at, finished_at) / 1000.0 AS ran_s,
       exit_code, error
FROM jobs;
