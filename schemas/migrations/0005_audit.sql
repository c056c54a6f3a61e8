-- 0005: snapshots that say why each record is in or out, contamination stored with the snapshot, forget
-- requests, and the audit views (documented with example queries in docs/AUDIT.md).

-- Why a member is in its snapshot: 'policy' (unflagged, or flagged only by informative checks), 'approved'
-- (a human approved it), 'edited' (the version a human edit made; original_record_id is the record it replaces).
ALTER TABLE snapshot_members ADD COLUMN basis VARCHAR;
ALTER TABLE snapshot_members ADD COLUMN decision_id VARCHAR;        -- the review decision relied on, if any
ALTER TABLE snapshot_members ADD COLUMN original_record_id VARCHAR; -- set for edited versions

-- Every training record a snapshot left out, with the reason: 'forgotten', 'in_eval_set', 'rejected',
-- 'duplicate' (a removed member of a duplicate cluster), 'held_back' (flagged by a blocking check, not approved).
CREATE TABLE snapshot_exclusions (
    snapshot_id VARCHAR NOT NULL,
    record_id   VARCHAR NOT NULL,
    reason      VARCHAR NOT NULL,
    detail      VARCHAR,
    decision_id VARCHAR,
    PRIMARY KEY (snapshot_id, record_id)
);

-- Registered eval items that nearly duplicate a member of the snapshot's train split (checked at creation).
CREATE TABLE snapshot_contamination (
    snapshot_id VARCHAR NOT NULL,
    eval_set    VARCHAR NOT NULL,
    eval_item   VARCHAR NOT NULL,
    record_id   VARCHAR NOT NULL,   -- the train member
    similarity  DOUBLE NOT NULL,    -- exact Jaccard on the compared text
    scope       VARCHAR NOT NULL,
    PRIMARY KEY (snapshot_id, eval_set, eval_item, record_id)
);

-- `refinery forget`: records (or every record of a source file) left out of all future snapshots.
CREATE TABLE forget_requests (
    forget_id  VARCHAR PRIMARY KEY,
    kind       VARCHAR NOT NULL CHECK (kind IN ('record', 'source')),
    target     VARCHAR NOT NULL,    -- a record id, or a source file as stored in source_rows.file
    reason     VARCHAR,
    actor      VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL
);

-- Every forgotten record: the targets, the records of forgotten source files, and every version derived from them.
CREATE VIEW forgotten_records AS
WITH RECURSIVE direct AS (
    SELECT f.forget_id, f.target AS record_id FROM forget_requests f WHERE f.kind = 'record'
    UNION
    SELECT f.forget_id, s.record_id FROM forget_requests f JOIN source_rows s ON s.file = f.target
    WHERE f.kind = 'source'
), derived(forget_id, record_id) AS (
    SELECT forget_id, record_id FROM direct
    UNION
    SELECT d.forget_id, v.record_id FROM derived d JOIN record_versions v ON v.parent_record_id = d.record_id
)
SELECT DISTINCT d.record_id, f.forget_id, f.kind, f.target, f.reason, f.actor, f.created_at
FROM derived d JOIN forget_requests f USING (forget_id);

-- Audit view: the training records of every adapter (through its snapshot). source_record_id is the record
-- whose source rows the member came from (the original of an edited version).
CREATE VIEW adapter_members AS
SELECT a.adapter_id, m.snapshot_id, m.record_id, m.split, m.basis, m.decision_id, m.original_record_id,
       coalesce(m.original_record_id, m.record_id) AS source_record_id
FROM adapters a JOIN snapshot_members m USING (snapshot_id);

-- Audit view: every review decision about a record in an adapter's data (the member or the original it
-- replaced); relied_on = this is the decision the snapshot used.
CREATE VIEW adapter_record_decisions AS
SELECT am.adapter_id, am.snapshot_id, am.record_id, am.split, am.basis, d.decision_id, d.record_id AS decided_record_id,
       d.decision, d.actor, d.round_name, d.source, d.comment, d.decided_at,
       coalesce(d.decision_id = am.decision_id, false) AS relied_on
FROM adapter_members am JOIN review_decisions d ON d.record_id = am.record_id OR d.record_id = am.original_record_id;

-- Audit view: which snapshot (and adapter, when one was trained on it) holds data from which source row.
-- adapter_id is NULL for a snapshot no adapter was trained on.
CREATE VIEW source_row_usage AS
SELECT s.file, s.row, s.sub_index, s.batch_id, s.record_id AS source_record_id, m.record_id AS member_record_id,
       m.snapshot_id, m.split, a.adapter_id
FROM source_rows s
JOIN snapshot_members m ON coalesce(m.original_record_id, m.record_id) = s.record_id
LEFT JOIN adapters a ON a.snapshot_id = m.snapshot_id;

-- Audit macro: what changed between the training data of two adapters, one row per changed record:
-- 'added', 'removed', 'changed' (another version of the same source record), 'moved' (another split).
CREATE MACRO adapter_data_diff(adapter_a, adapter_b) AS TABLE
WITH a AS (SELECT * FROM adapter_members WHERE adapter_id = adapter_a),
     b AS (SELECT * FROM adapter_members WHERE adapter_id = adapter_b),
     joined AS (
        SELECT coalesce(b.source_record_id, a.source_record_id) AS source_record_id, a.record_id AS record_a,
               b.record_id AS record_b, a.split AS split_a, b.split AS split_b,
               CASE WHEN a.record_id IS NULL THEN 'added'
                    WHEN b.record_id IS NULL THEN 'removed'
                    WHEN a.record_id <> b.record_id THEN 'changed'
                    WHEN a.split <> b.split THEN 'moved'
                    ELSE 'same' END AS change
        FROM a FULL OUTER JOIN b ON a.source_record_id = b.source_record_id
     )
SELECT * FROM joined WHERE change <> 'same';
