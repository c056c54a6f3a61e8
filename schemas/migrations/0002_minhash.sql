-- 0002: stored MinHash signatures, so a rescan sketches only the records it has not seen.
-- A signature depends on the record's text in one scope and on the sketch parameters (permutations, shingle
-- size, seed, hashing scheme, normalisation); params_hash names that set and minhash_params spells it out.

CREATE TABLE minhash_params (
    params_hash VARCHAR PRIMARY KEY,
    params_json VARCHAR NOT NULL,
    created_at  TIMESTAMP NOT NULL
);

CREATE TABLE minhash_signatures (
    params_hash VARCHAR NOT NULL,
    record_id   VARCHAR NOT NULL,
    n_shingles  BIGINT NOT NULL,            -- 0: the text has no shingles (empty, whitespace, punctuation)
    signature   BLOB NOT NULL,              -- num_perm little-endian uint32 minima
    PRIMARY KEY (params_hash, record_id)
);
