-- 0007: the gate's evidence beyond eval_runs (0001): the adapter against every baseline, the contamination and
-- general-capability regression status of each run, and per-example graded scores.

-- Per-example score under the run's gate metric, in [0, 1] (accuracy: 0/1; field_accuracy, chrf, rouge_l: graded).
-- NULL for rows written before this migration.
ALTER TABLE eval_results ADD COLUMN score DOUBLE;

-- One row per (eval run, baseline): the paired comparison the gate computed.
CREATE TABLE eval_comparisons (
    eval_id             VARCHAR NOT NULL,
    baseline            VARCHAR NOT NULL,   -- system name: base_zero_shot, base_few_shot, base_label_ranking, champion
    baseline_adapter_id VARCHAR,            -- champion: the promoted adapter it ran; NULL for base-model baselines
    baseline_score      DOUBLE NOT NULL,
    diff                DOUBLE NOT NULL,    -- adapter score - baseline score
    ci_low              DOUBLE NOT NULL,    -- paired bootstrap CI of diff
    ci_high             DOUBLE NOT NULL,
    p_value             DOUBLE NOT NULL,
    test                VARCHAR NOT NULL,   -- 'McNemar' (0/1 scores) or 'sign test' (graded scores)
    is_strongest        BOOLEAN NOT NULL,   -- the baseline the verdict was decided against
    PRIMARY KEY (eval_id, baseline)
);

-- One row per eval run: the task, and the two checks besides the scores.
CREATE TABLE eval_checks (
    eval_id              VARCHAR PRIMARY KEY,
    task_kind            VARCHAR NOT NULL,  -- classification | exact_match | extraction | free_form
    n_examples           INTEGER NOT NULL,
    strongest_baseline   VARCHAR NOT NULL,
    p_value              DOUBLE NOT NULL,
    test                 VARCHAR NOT NULL,
    champion_adapter_id  VARCHAR,           -- the promoted adapter run as baseline 'champion', if any
    contamination_status VARCHAR NOT NULL CHECK (contamination_status IN ('clean', 'contaminated')),
    contaminated_items   INTEGER NOT NULL,  -- eval examples overlapping the snapshot's training data
    contamination_method VARCHAR NOT NULL,
    regression_status    VARCHAR NOT NULL CHECK (regression_status IN ('pass', 'fail', 'skipped')),
    regression_reason    VARCHAR NOT NULL,
    general_set          VARCHAR,           -- path of the general prompts (JSONL)
    general_set_hash     VARCHAR,           -- sha256 of the prompts used
    general_prompts      INTEGER,
    base_general_loss    DOUBLE,            -- base model's mean token loss on its own answers
    adapter_general_loss DOUBLE,            -- the adapter's on the same answers
    general_loss_change  DOUBLE,            -- adapter / base - 1
    max_regression       DOUBLE
);

-- Every eval run with its verdict and evidence in one row (what `refinery lineage` shows for an eval).
CREATE VIEW eval_gate AS
SELECT e.eval_id, e.adapter_id, e.snapshot_id, e.eval_set, e.eval_set_hash, e.metric, e.adapter_score, e.verdict,
       e.ci_low, e.ci_high, c.task_kind, c.n_examples, c.strongest_baseline, c.p_value, c.test,
       c.champion_adapter_id, c.contamination_status, c.contaminated_items, c.contamination_method,
       c.regression_status, c.regression_reason, c.general_set, c.general_set_hash, c.general_prompts,
       c.base_general_loss, c.adapter_general_loss, c.general_loss_change, c.max_regression, e.reason,
       e.created_at
FROM eval_runs e LEFT JOIN eval_checks c USING (eval_id);
