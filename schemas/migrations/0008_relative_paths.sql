-- 0008: artifact paths relative to the workspace root (the folder of catalog.duckdb), so that a workspace can be
-- moved, copied or restored from a backup (docs/OPERATIONS.md). New rows store a path inside the workspace
-- relative to it, in POSIX form (schemas/artifact_paths.py), and every reader resolves it against the root the
-- catalog is opened from; a path outside the workspace stays absolute.
--
-- A migration cannot know the root, but it needs none for snapshots, adapters and eval runs: Refinery always
-- writes their folders at <root>/snapshots/<id>, <root>/adapters/<id> and <root>/evals/<id>. So an absolute path
-- that ends in that layout becomes the relative one, wherever the workspace was when it was written. Base model
-- folders have no fixed place (the converted default model sits under models/, a folder of the user's anywhere):
-- their old absolute paths are resolved when read (schemas.artifact_paths.resolve_stored).

UPDATE snapshots SET path = 'snapshots/' || snapshot_id
WHERE ends_with(replace(path, '\', '/'), '/snapshots/' || snapshot_id);

UPDATE adapters SET path = 'adapters/' || adapter_id
WHERE ends_with(replace(path, '\', '/'), '/adapters/' || adapter_id);

UPDATE eval_runs SET path = 'evals/' || eval_id
WHERE ends_with(replace(path, '\', '/'), '/evals/' || eval_id);
