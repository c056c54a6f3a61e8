-- 0004: pair findings (conflicts, semantic duplicates), contamination hits, record versions and review
-- decisions. Columns ending in _json hold JSON text.

-- Findings about two records at once: "same prompt, conflicting answers", paraphrase duplicates, ...
-- record_a is the flagged record, record_b the record it is compared with.
CREATE TABLE finding_pairs (
    scan_id             VARCHAR NOT NULL,
    check_name          VARCHAR NOT NULL,
    record_a            VARCHAR NOT NULL,
    record_b            VARCHAR NOT NULL,
    score               DOUBLE NOT NULL,      -- the check's pair score in [0, 1], higher = worse
    prompt_similarity   DOUBLE,
    response_similarity DOUBLE,
    reason              VARCHAR,
    details_json        VARCHAR,
    PRIMARY KEY (scan_id, check_name, record_a, record_b)
);

-- A training record that overlaps an item of a registered eval set.
CREATE TABLE contamination_hits (
    scan_id      VARCHAR NOT NULL,
    check_name   VARCHAR NOT NULL,
    record_id    VARCHAR NOT NULL,            -- the training record
    eval_set     VARCHAR NOT NULL,
    eval_item    VARCHAR NOT NULL,            -- the eval set's record id
    overlap      DOUBLE NOT NULL,             -- in [0, 1]; the method says what it measures
    method       VARCHAR NOT NULL,            -- e.g. 'ngram13', 'ngram8', 'minhash'
    details_json VARCHAR,
    PRIMARY KEY (scan_id, check_name, record_id, eval_set, eval_item)
);

-- A new version of a record (an annotator's edit, a PII redaction) linked to its original.
CREATE TABLE record_versions (
    record_id        VARCHAR PRIMARY KEY,     -- the new version (also a row of records)
    parent_record_id VARCHAR NOT NULL,        -- the record it replaces
    kind             VARCHAR NOT NULL,        -- 'edit', 'redaction'
    actor            VARCHAR NOT NULL,        -- annotator or 'refinery:<check>'
    reason           VARCHAR,
    source_id        VARCHAR,                 -- review round, scan or other artifact that made it
    created_at       TIMESTAMP NOT NULL
);

-- Decisions about records: human review (Argilla) and automatic policy. The latest decision per record wins.
CREATE TABLE review_decisions (
    decision_id      VARCHAR PRIMARY KEY,
    record_id        VARCHAR NOT NULL,
    decision         VARCHAR NOT NULL CHECK (decision IN ('approve', 'reject', 'edit')),
    edited_record_id VARCHAR,                 -- the new version when decision = 'edit'
    actor            VARCHAR NOT NULL,        -- annotator user name, or 'policy:<name>'
    round_name       VARCHAR,                 -- review round (NULL for automatic decisions)
    source           VARCHAR NOT NULL,        -- 'argilla', 'policy', 'cli'
    check_names      VARCHAR,                 -- the checks that sent the record to review, comma-separated
    comment          VARCHAR,
    external_ids_json VARCHAR,                -- Argilla dataset / record / response ids
    decided_at       TIMESTAMP NOT NULL,
    recorded_at      TIMESTAMP NOT NULL
);

CREATE VIEW record_decisions AS
SELECT * EXCLUDE (rn) FROM (
    SELECT d.*, row_number() OVER (PARTITION BY d.record_id ORDER BY d.decided_at DESC, d.decision_id DESC) AS rn
    FROM review_decisions d
) WHERE rn = 1;

CREATE VIEW conflicts AS
SELECT p.scan_id, p.check_name, p.record_a, p.record_b, ra.prompt AS prompt_a, ra.response AS response_a,
       rb.prompt AS prompt_b, rb.response AS response_b, ra.label AS label_a, rb.label AS label_b,
       p.prompt_similarity, p.response_similarity, p.score, p.reason
FROM finding_pairs p JOIN records ra ON ra.record_id = p.record_a JOIN records rb ON rb.record_id = p.record_b
WHERE p.check_name = 'inconsistency' AND p.scan_id = (SELECT scan_id FROM latest_scan);

CREATE VIEW pair_findings AS
SELECT p.scan_id, p.check_name, p.record_a, p.record_b, ra.prompt AS prompt_a, ra.response AS response_a,
       rb.prompt AS prompt_b, rb.response AS response_b, p.prompt_similarity, p.response_similarity, p.score,
       p.reason
FROM finding_pairs p JOIN records ra ON ra.record_id = p.record_a JOIN records rb ON rb.record_id = p.record_b
WHERE p.scan_id = (SELECT scan_id FROM latest_scan);

CREATE VIEW contamination AS
SELECT c.scan_id, c.check_name, c.record_id, c.eval_set, c.eval_item, c.overlap, c.method, r.prompt,
       e.prompt AS eval_prompt
FROM contamination_hits c JOIN records r USING (record_id) JOIN records e ON e.record_id = c.eval_item
WHERE c.scan_id = (SELECT scan_id FROM latest_scan);

-- One row per check of the latest scan: how many records it flagged and how its scores are spread.
CREATE VIEW quality_summary AS
SELECT f.check_name, count(*) AS records, sum(CASE WHEN f.flagged THEN 1 ELSE 0 END) AS flagged,
       round(100.0 * sum(CASE WHEN f.flagged THEN 1 ELSE 0 END) / count(*), 2) AS flagged_pct,
       avg(f.score) AS mean_score, quantile_cont(f.score, 0.5) AS median_score,
       quantile_cont(f.score, 0.95) AS p95_score, max(f.score) AS max_score
FROM findings f WHERE f.scan_id = (SELECT scan_id FROM latest_scan)
GROUP BY f.check_name;
