-- 0010: which check caused each snapshot exclusion or change, so a snapshot can say, per check, how many records it
-- dropped or changed, and each exclusion points at the finding (scan, check, score) or decision behind it.
--
-- One row per (snapshot, record, check): a record held back by two blocking checks has two rows; a removed duplicate
-- names its duplicate check (and the kept record); a record rejected in review names the checks that sent it there
-- (review_decisions.check_names). Exclusions that no check caused (forgotten, in_eval_set) have no row here.
CREATE TABLE snapshot_exclusion_causes (
    snapshot_id    VARCHAR NOT NULL,
    record_id      VARCHAR NOT NULL,
    check_name     VARCHAR NOT NULL,
    scan_id        VARCHAR NOT NULL,    -- the snapshot's scan: the finding is (scan_id, record_id, check_name)
    score          DOUBLE,              -- a blocking finding's score (NULL for a duplicate or a decision)
    kept_record_id VARCHAR,             -- for a removed duplicate: the member kept in its place
    PRIMARY KEY (snapshot_id, record_id, check_name)
);

-- Snapshots made before 0010: the causes are read back from the exclusion's detail text, which named them
-- ('flagged by label_issue (0.994), inconsistency (0.9), not approved'; 'near_dup duplicate of rec_...').
INSERT INTO snapshot_exclusion_causes
SELECT DISTINCT e.snapshot_id, e.record_id, f.check_name, s.scan_id, f.score, NULL
FROM snapshot_exclusions e
JOIN snapshots s USING (snapshot_id)
JOIN findings f ON f.scan_id = s.scan_id AND f.record_id = e.record_id
WHERE e.reason = 'held_back'
  AND list_contains(regexp_extract_all(e.detail, '([a-z_]+) \(', 1), f.check_name);

INSERT INTO snapshot_exclusion_causes
SELECT e.snapshot_id, e.record_id, regexp_extract(e.detail, '^([a-z_]+) duplicate of', 1), s.scan_id, NULL,
       regexp_extract(e.detail, 'duplicate of (\S+)$', 1)
FROM snapshot_exclusions e
JOIN snapshots s USING (snapshot_id)
WHERE e.reason = 'duplicate' AND regexp_extract(e.detail, '^([a-z_]+) duplicate of', 1) <> '';

INSERT INTO snapshot_exclusion_causes
SELECT DISTINCT e.snapshot_id, e.record_id, trim(c.check_name), s.scan_id, NULL, NULL
FROM snapshot_exclusions e
JOIN snapshots s USING (snapshot_id)
JOIN review_decisions d ON d.decision_id = e.decision_id,
     unnest(string_split(coalesce(d.check_names, ''), ',')) AS c(check_name)
WHERE e.reason = 'rejected' AND trim(c.check_name) <> '';

-- Per snapshot and check: records the snapshot left out because of it (dropped), those left out for that check
-- alone (dropped_alone: no other check would have), and members it changed (changed: edited versions whose review
-- decision came from a round that check sent the record to).
CREATE VIEW snapshot_check_effects AS
WITH dropped AS (
    SELECT snapshot_id, check_name, count(DISTINCT record_id) AS dropped,
           count(DISTINCT record_id) FILTER (WHERE causes = 1) AS dropped_alone
    FROM (SELECT *, count(*) OVER (PARTITION BY snapshot_id, record_id) AS causes FROM snapshot_exclusion_causes)
    GROUP BY ALL
),
changed AS (
    SELECT m.snapshot_id, trim(c.check_name) AS check_name, count(DISTINCT m.record_id) AS changed
    FROM snapshot_members m
    JOIN review_decisions d ON d.decision_id = m.decision_id,
         unnest(string_split(coalesce(d.check_names, ''), ',')) AS c(check_name)
    WHERE m.basis = 'edited' AND trim(c.check_name) <> ''
    GROUP BY ALL
)
SELECT snapshot_id, check_name, coalesce(d.dropped, 0) AS dropped, coalesce(d.dropped_alone, 0) AS dropped_alone,
       coalesce(c.changed, 0) AS changed
FROM dropped d FULL OUTER JOIN changed c USING (snapshot_id, check_name)
ORDER BY snapshot_id, dropped DESC, changed DESC, check_name;
