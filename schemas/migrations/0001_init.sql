-- 0001: the core catalog. Columns ending in _json hold JSON text (query with ->> or json_extract).

CREATE TABLE ingest_batches (
    batch_id     VARCHAR PRIMARY KEY,
    name         VARCHAR NOT NULL,
    purpose      VARCHAR NOT NULL,          -- 'train' or 'eval'
    eval_set     VARCHAR,                   -- name of the eval set when purpose = 'eval'
    format       VARCHAR NOT NULL,
    files_json   VARCHAR NOT NULL,
    config_json  VARCHAR NOT NULL,
    rows_read    BIGINT DEFAULT 0,
    ingested     BIGINT DEFAULT 0,
    quarantined  BIGINT DEFAULT 0,
    new_records  BIGINT DEFAULT 0,
    status       VARCHAR NOT NULL,          -- 'running' until every row is stored, then 'complete'
    started_at   TIMESTAMP NOT NULL,
    finished_at  TIMESTAMP
);

CREATE TABLE records (
    record_id        VARCHAR PRIMARY KEY,   -- rec_ + hash of the canonical messages
    messages_json    VARCHAR NOT NULL,
    prompt           VARCHAR NOT NULL,      -- non-system text before the final assistant turn
    response         VARCHAR NOT NULL,      -- final assistant turn ('' for prompt-only records)
    label            VARCHAR,
    metadata_json    VARCHAR NOT NULL,
    n_messages       INTEGER NOT NULL,
    first_batch_id   VARCHAR NOT NULL,
    parent_record_id VARCHAR,               -- set for a new version of a record (edit, redaction)
    created_at       TIMESTAMP NOT NULL
);

CREATE TABLE source_rows (
    batch_id      VARCHAR NOT NULL,
    file          VARCHAR NOT NULL,
    row           BIGINT NOT NULL,
    sub_index     INTEGER NOT NULL,
    record_id     VARCHAR NOT NULL,
    format        VARCHAR NOT NULL,
    metadata_json VARCHAR NOT NULL,
    PRIMARY KEY (batch_id, file, row, sub_index)
);

CREATE TABLE quarantined_rows (
    batch_id  VARCHAR NOT NULL,
    file      VARCHAR NOT NULL,
    row       BIGINT NOT NULL,
    sub_index INTEGER NOT NULL,
    reason    VARCHAR NOT NULL,
    raw       BLOB NOT NULL,
    PRIMARY KEY (batch_id, file, row, sub_index)
);

CREATE TABLE scans (
    scan_id      VARCHAR PRIMARY KEY,
    status       VARCHAR NOT NULL,          -- 'running', 'complete'
    config_json  VARCHAR NOT NULL,
    records      BIGINT NOT NULL,
    summary_json VARCHAR,
    started_at   TIMESTAMP NOT NULL,
    finished_at  TIMESTAMP
);

-- One row per record x check: a score in [0, 1] (direction documented per check), a flag and a reason.
CREATE TABLE findings (
    scan_id      VARCHAR NOT NULL,
    record_id    VARCHAR NOT NULL,
    check_name   VARCHAR NOT NULL,
    score        DOUBLE NOT NULL,
    flagged      BOOLEAN NOT NULL,
    reason       VARCHAR,
    details_json VARCHAR,
    PRIMARY KEY (scan_id, record_id, check_name)
);

-- Members of duplicate clusters, each pointing at the kept member and saying why that one was kept.
CREATE TABLE duplicate_members (
    scan_id        VARCHAR NOT NULL,
    check_name     VARCHAR NOT NULL,
    cluster_id     VARCHAR NOT NULL,
    record_id      VARCHAR NOT NULL,
    kept_record_id VARCHAR NOT NULL,
    is_kept        BOOLEAN NOT NULL,
    similarity     DOUBLE NOT NULL,
    keep_reason    VARCHAR NOT NULL,
    PRIMARY KEY (scan_id, check_name, record_id)
);

CREATE TABLE snapshots (
    snapshot_id     VARCHAR PRIMARY KEY,
    parent_id       VARCHAR,
    scan_id         VARCHAR,
    path            VARCHAR NOT NULL,
    manifest_sha256 VARCHAR NOT NULL,
    policy_json     VARCHAR NOT NULL,
    train           BIGINT NOT NULL,
    validation      BIGINT NOT NULL,
    test            BIGINT NOT NULL,
    created_at      TIMESTAMP NOT NULL
);

CREATE TABLE snapshot_members (
    snapshot_id VARCHAR NOT NULL,
    record_id   VARCHAR NOT NULL,
    split       VARCHAR NOT NULL,
    PRIMARY KEY (snapshot_id, record_id)
);

CREATE TABLE base_models (
    base_model_id VARCHAR PRIMARY KEY,
    source        VARCHAR NOT NULL,         -- package, folder or hub id it came from
    path          VARCHAR NOT NULL,
    sha256        VARCHAR NOT NULL,         -- hash over the weight files
    created_at    TIMESTAMP NOT NULL
);

CREATE TABLE adapters (
    adapter_id      VARCHAR PRIMARY KEY,
    snapshot_id     VARCHAR NOT NULL,
    base_model_id   VARCHAR NOT NULL,
    path            VARCHAR NOT NULL,
    manifest_sha256 VARCHAR NOT NULL,
    config_json     VARCHAR NOT NULL,
    train_loss      DOUBLE,
    val_loss        DOUBLE,
    created_at      TIMESTAMP NOT NULL
);

CREATE TABLE eval_runs (
    eval_id         VARCHAR PRIMARY KEY,
    adapter_id      VARCHAR NOT NULL,
    snapshot_id     VARCHAR NOT NULL,
    eval_set        VARCHAR NOT NULL,       -- 'snapshot:test' or a registered eval set name
    eval_set_hash   VARCHAR NOT NULL,
    metric          VARCHAR NOT NULL,
    adapter_score   DOUBLE NOT NULL,
    baselines_json  VARCHAR NOT NULL,       -- system name -> score
    verdict         VARCHAR NOT NULL,       -- 'pass' or 'fail'
    ci_low          DOUBLE,
    ci_high         DOUBLE,
    reason          VARCHAR NOT NULL,
    thresholds_json VARCHAR NOT NULL,
    path            VARCHAR NOT NULL,
    created_at      TIMESTAMP NOT NULL
);

CREATE TABLE eval_results (
    eval_id       VARCHAR NOT NULL,
    system        VARCHAR NOT NULL,         -- 'adapter', 'base_zero_shot', 'base_few_shot', ...
    example_index INTEGER NOT NULL,
    record_id     VARCHAR,
    prompt        VARCHAR NOT NULL,
    prediction    VARCHAR NOT NULL,
    reference     VARCHAR NOT NULL,
    correct       BOOLEAN NOT NULL,
    PRIMARY KEY (eval_id, system, example_index)
);

CREATE TABLE lineage_edges (
    child_id    VARCHAR NOT NULL,
    child_kind  VARCHAR NOT NULL,
    parent_id   VARCHAR NOT NULL,
    parent_kind VARCHAR NOT NULL,
    relation    VARCHAR NOT NULL,
    created_at  TIMESTAMP NOT NULL,
    PRIMARY KEY (child_id, parent_id, relation)
);

-- Views: the common questions as one query each (documented in docs/CATALOG.md).

CREATE VIEW quarantine AS
SELECT q.file, q.row AS line, q.sub_index, q.reason, q.raw, q.batch_id, b.name AS batch_name
FROM quarantined_rows q JOIN ingest_batches b USING (batch_id);

CREATE VIEW record_sources AS
SELECT s.record_id, s.batch_id, b.name AS batch_name, b.purpose, b.eval_set, s.file, s.row, s.sub_index,
       s.format
FROM source_rows s JOIN ingest_batches b USING (batch_id);

CREATE VIEW eval_items AS
SELECT DISTINCT b.eval_set, r.record_id, r.prompt, r.response, r.label
FROM records r JOIN source_rows s USING (record_id) JOIN ingest_batches b USING (batch_id)
WHERE b.purpose = 'eval';

CREATE VIEW latest_scan AS
SELECT * FROM scans WHERE status = 'complete' ORDER BY finished_at DESC LIMIT 1;

CREATE VIEW flagged_records AS
SELECT f.scan_id, f.record_id, f.check_name, f.score, f.reason, r.prompt, r.response
FROM findings f JOIN records r USING (record_id)
WHERE f.flagged AND f.scan_id = (SELECT scan_id FROM latest_scan);

CREATE VIEW duplicate_clusters AS
SELECT d.scan_id, d.check_name, d.cluster_id, d.record_id, d.is_kept, d.kept_record_id, d.similarity,
       d.keep_reason, r.prompt, r.response
FROM duplicate_members d JOIN records r USING (record_id)
WHERE d.scan_id = (SELECT scan_id FROM latest_scan);

CREATE VIEW check_summary AS
SELECT scan_id, check_name, count(*) AS records, sum(CASE WHEN flagged THEN 1 ELSE 0 END) AS flagged,
       avg(score) AS mean_score
FROM findings GROUP BY scan_id, check_name;

CREATE VIEW eval_verdicts AS
SELECT e.eval_id, e.adapter_id, e.snapshot_id, e.eval_set, e.metric, e.adapter_score, e.baselines_json,
       e.verdict, e.ci_low, e.ci_high, e.reason, e.created_at
FROM eval_runs e;
