"""Text similarity for checks, snapshots and eval: shingles, MinHash LSH, exact Jaccard, duplicate clusters, kNN."""
