-- 0003: the adapter registry. One row per promote, forced promote or rollback; the current adapter is the
-- adapter_id of the latest event (a rollback's adapter_id is the adapter it restored).

CREATE TABLE promotions (
    event_id            VARCHAR PRIMARY KEY,   -- promo_ + hash of the event
    seq                 INTEGER NOT NULL UNIQUE, -- 1, 2, 3, ...: the order of events
    adapter_id          VARCHAR NOT NULL,      -- the adapter current after this event
    action              VARCHAR NOT NULL CHECK (action IN ('promote', 'rollback', 'force_promote')),
    previous_adapter_id VARCHAR,               -- the adapter current before this event (NULL for the first)
    eval_id             VARCHAR,               -- the passing verdict relied on; NULL when forced or rolled back
    reason              VARCHAR,               -- required for force_promote
    actor               VARCHAR NOT NULL,      -- $REFINERY_ACTOR or the OS user
    created_at          TIMESTAMP NOT NULL
);

CREATE VIEW current_adapter AS
SELECT p.adapter_id, p.event_id, p.action, p.created_at AS since, p.actor, p.eval_id, p.reason
FROM promotions p ORDER BY p.seq DESC LIMIT 1;

-- Every adapter with its latest verdict and its place in the registry. status: promoted (current), retired
-- (was current, is not now), passed / failed (latest verdict, never promoted), unevaluated.
CREATE VIEW registry AS
WITH latest_eval AS (
    SELECT * FROM (
        SELECT e.*, row_number() OVER (PARTITION BY e.adapter_id ORDER BY e.created_at DESC, e.eval_id DESC) AS rn
        FROM eval_runs e
    ) WHERE rn = 1
),
made_current AS (
    SELECT adapter_id, max(created_at) AS promoted_at, count(*) AS times_made_current
    FROM promotions GROUP BY adapter_id
)
SELECT a.adapter_id,
       CASE
           WHEN c.adapter_id IS NOT NULL THEN 'promoted'
           WHEN m.adapter_id IS NOT NULL THEN 'retired'
           WHEN le.verdict = 'pass' THEN 'passed'
           WHEN le.verdict IS NOT NULL THEN 'failed'
           ELSE 'unevaluated'
       END AS status,
       c.adapter_id IS NOT NULL AS is_current,
       m.promoted_at,
       le.verdict,
       le.eval_id,
       le.metric,
       le.adapter_score,
       le.ci_low,
       le.ci_high,
       le.eval_set,
       le.created_at AS evaluated_at,
       a.snapshot_id,
       a.base_model_id,
       a.created_at
FROM adapters a
LEFT JOIN latest_eval le ON le.adapter_id = a.adapter_id
LEFT JOIN current_adapter c ON c.adapter_id = a.adapter_id
LEFT JOIN made_current m ON m.adapter_id = a.adapter_id;
