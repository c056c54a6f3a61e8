-- 0009: the `conflicts` view lists every conflict the latest scan found, whichever check found it (it listed
-- only the opt-in `inconsistency` check's pairs, so it was empty after a default scan even when `exact_prompt`
-- had found the same query under two labels). Same columns as before; `check_name` says which check found it:
--
--   exact_prompt                          a member of a same-prompt cluster whose label or normalised response
--                                         differs from the kept member's (record_b = the kept member)
--   near_dup, near_dup_prompt,            a member of a duplicate cluster whose label differs from the kept
--   semantic_dup                          member's
--   inconsistency                         its pairs (matching prompts, different answers), as before
--   label_issue                           a record whose label disagrees with its neighbourhood (record_b = the
--                                         nearest neighbour carrying the suggested label)
--
-- A record's label is `records.label`, else its response when that is one line of at most 4 words (a class
-- label given as the answer, as the inconsistency check reads it); two labels differ only when both exist.
-- Labels and responses are compared normalised: lower case, ASCII punctuation and repeated whitespace removed, as
-- curation.similarity.exact.normalize_for_dedup does (which also folds Unicode and drops non-ASCII punctuation).
-- The same pair can appear once per check that found it.

CREATE OR REPLACE VIEW conflicts AS
WITH scan AS (SELECT scan_id FROM latest_scan),
members AS (
    SELECT * FROM duplicate_members
    WHERE scan_id = (SELECT scan_id FROM scan) AND NOT is_kept
      AND check_name IN ('exact_prompt', 'near_dup', 'near_dup_prompt', 'semantic_dup')
),
normalised AS (
    SELECT record_id, response, coalesce(nullif(trim(label), ''), trim(response)) AS shown,
           trim(regexp_replace(regexp_replace(lower(coalesce(label, '')), '[!"#%&''()*,\-./:;?@\[\\\]_{}]', ' ', 'g'),
                               '\s+', ' ', 'g')) AS n_label,
           trim(regexp_replace(regexp_replace(lower(response), '[!"#%&''()*,\-./:;?@\[\\\]_{}]', ' ', 'g'),
                               '\s+', ' ', 'g')) AS n_response
    FROM records
    WHERE record_id IN (SELECT record_id FROM members UNION SELECT kept_record_id FROM members)
),
answers AS (
    SELECT record_id, shown, n_response,
           coalesce(nullif(n_label, ''),
                    CASE WHEN strpos(trim(response), chr(10)) = 0 AND n_response <> ''
                              AND len(string_split(n_response, ' ')) <= 4 THEN n_response END) AS answer_label
    FROM normalised
),
cluster_conflicts AS (
    SELECT m.scan_id, m.check_name, m.record_id AS record_a, m.kept_record_id AS record_b,
           CASE WHEN m.check_name IN ('exact_prompt', 'near_dup_prompt') THEN m.similarity END AS prompt_similarity,
           CAST(NULL AS DOUBLE) AS response_similarity, m.similarity AS score,
           m.record_id || ' and ' || m.kept_record_id || ': ' || m.check_name || ' cluster ' || m.cluster_id || ' with '
               || CASE WHEN a.answer_label <> b.answer_label
                       THEN 'different labels (' || a.shown || ' vs ' || b.shown || ')'
                       ELSE 'different responses' END AS reason
    FROM members m JOIN answers a ON a.record_id = m.record_id JOIN answers b ON b.record_id = m.kept_record_id
    WHERE a.answer_label <> b.answer_label  -- NULL (a record without a label) is no difference
       OR (m.check_name = 'exact_prompt' AND a.n_response <> b.n_response)
),
pair_conflicts AS (
    SELECT p.scan_id, p.check_name, p.record_a, p.record_b, p.prompt_similarity, p.response_similarity, p.score,
           p.reason
    FROM finding_pairs p
    WHERE p.scan_id = (SELECT scan_id FROM scan) AND p.check_name IN ('inconsistency', 'label_issue')
)
SELECT c.scan_id, c.check_name, c.record_a, c.record_b, ra.prompt AS prompt_a, ra.response AS response_a,
       rb.prompt AS prompt_b, rb.response AS response_b, ra.label AS label_a, rb.label AS label_b,
       c.prompt_similarity, c.response_similarity, c.score, c.reason
FROM (SELECT * FROM cluster_conflicts UNION ALL SELECT * FROM pair_conflicts) c
JOIN records ra ON ra.record_id = c.record_a JOIN records rb ON rb.record_id = c.record_b;
