-- The decision a record is judged by: a human's (Argilla, CLI) always outranks an automatic one (`refinery review
-- auto`, source 'policy'), whatever their times; among decisions of the same rank the latest wins, as before. An
-- annotator who submitted before the policy ran, and was pulled after it, is still the one who decides.
CREATE OR REPLACE VIEW record_decisions AS
SELECT * EXCLUDE (rn) FROM (
    SELECT d.*, row_number() OVER (
        PARTITION BY d.record_id ORDER BY (d.source <> 'policy') DESC, d.decided_at DESC, d.decision_id DESC
    ) AS rn
    FROM review_decisions d
) WHERE rn = 1;
