-- 0006: human review in Argilla (docs/REVIEW.md): rounds, the items pushed, every raw response as fetched,
-- the outcome per record and round, and agreement figures. Decisions and edited versions go to the tables of
-- 0004 (review_decisions, record_versions). Columns ending in _json hold JSON text. API keys are never stored.

-- One Argilla dataset per round.
CREATE TABLE review_rounds (
    round_name         VARCHAR PRIMARY KEY,
    dataset_name       VARCHAR NOT NULL,      -- the Argilla dataset
    argilla_workspace  VARCHAR NOT NULL,
    argilla_dataset_id VARCHAR,               -- set once the dataset exists on the server
    api_url            VARCHAR NOT NULL,      -- the deployment (never its key)
    scan_id            VARCHAR,               -- the scan whose findings were pushed (NULL for an escalation round)
    parent_round       VARCHAR,               -- the round whose disagreements this round re-reviews
    checks             VARCHAR NOT NULL,      -- comma-separated checks of the pushed findings
    min_submitted      INTEGER NOT NULL,      -- annotators per record (Argilla task distribution)
    policy             VARCHAR NOT NULL,      -- 'majority', 'unanimous' or 'escalate'
    config_json        VARCHAR NOT NULL,
    created_at         TIMESTAMP NOT NULL
);

-- A record sent to review in a round; pushed_at is set once Argilla holds it (a rerun pushes the rest).
CREATE TABLE review_items (
    round_name        VARCHAR NOT NULL,
    record_id         VARCHAR NOT NULL,       -- also the Argilla record id (external id)
    other_record_id   VARCHAR,                -- the other record of a pair finding (duplicate kept, conflict)
    check_names       VARCHAR NOT NULL,       -- checks that flagged it, comma-separated
    scores_json       VARCHAR NOT NULL,       -- check -> score
    argilla_record_id VARCHAR,                -- Argilla's own record UUID
    queued_at         TIMESTAMP NOT NULL,
    pushed_at         TIMESTAMP,
    PRIMARY KEY (round_name, record_id)
);

-- Every response as fetched from Argilla, stored before anything is applied. A response changed by its
-- annotator later is a new row (same response_id, later updated_at); pulling twice adds nothing.
CREATE TABLE review_responses (
    response_id        VARCHAR NOT NULL,      -- Argilla response UUID
    updated_at         TIMESTAMP NOT NULL,    -- Argilla's time of this version of the response
    round_name         VARCHAR NOT NULL,
    record_id          VARCHAR NOT NULL,
    argilla_record_id  VARCHAR NOT NULL,
    argilla_dataset_id VARCHAR NOT NULL,
    annotator          VARCHAR NOT NULL,      -- Argilla user name
    annotator_id       VARCHAR NOT NULL,      -- Argilla user UUID
    status             VARCHAR NOT NULL,      -- 'submitted', 'discarded', 'draft'
    decision           VARCHAR,               -- 'approve', 'reject', 'edit' (NULL if not answered)
    corrected_response VARCHAR,
    comment            VARCHAR,
    values_json        VARCHAR NOT NULL,      -- the raw values as Argilla returned them
    inserted_at        TIMESTAMP,             -- Argilla's creation time of the response
    fetched_at         TIMESTAMP NOT NULL,
    PRIMARY KEY (response_id, updated_at)
);

-- The latest version of each response.
CREATE VIEW review_latest_responses AS
SELECT * EXCLUDE (rn) FROM (
    SELECT r.*, row_number() OVER (PARTITION BY r.response_id ORDER BY r.updated_at DESC) AS rn
    FROM review_responses r
) WHERE rn = 1;

-- Where each reviewed record stands after the last pull: 'decided' (decision_id says which), 'pending' (fewer
-- submitted responses than min_submitted), 'disagreement' (policy found no decision), 'escalated' (sent to
-- parent_round's escalation round), 'invalid' (an edit without a corrected response).
CREATE TABLE review_outcomes (
    round_name   VARCHAR NOT NULL,
    record_id    VARCHAR NOT NULL,
    state        VARCHAR NOT NULL,
    decision     VARCHAR,
    decision_id  VARCHAR,
    votes_json   VARCHAR NOT NULL,            -- decision -> count of submitted responses
    policy       VARCHAR NOT NULL,
    updated_at   TIMESTAMP NOT NULL,
    PRIMARY KEY (round_name, record_id)
);

-- Agreement per round (annotator = '*') and per annotator, recomputed by every pull.
--   round: agreement = observed pairwise agreement on records with 2+ submitted responses, kappa = Fleiss' kappa
--   annotator: agreement = share of their decisions on multi-annotated records equal to the others' majority
CREATE TABLE review_agreement (
    round_name  VARCHAR NOT NULL,
    annotator   VARCHAR NOT NULL,
    records     BIGINT NOT NULL,              -- records counted
    agreement   DOUBLE,
    kappa       DOUBLE,
    computed_at TIMESTAMP NOT NULL,
    PRIMARY KEY (round_name, annotator)
);
