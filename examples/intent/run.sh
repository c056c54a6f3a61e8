#!/usr/bin/env bash
# Intent classification from ingest to gate verdict with one recipe (train.yaml, eval.yaml, policy.yaml here),
# unchanged across data sets: the README's "Real data" section shows what it gave.
# Usage: examples/intent/run.sh DATASET [WORKSPACE]
#   DATASET: banking77 (77 intents) | hwu64 (64 intents) | hwu64-scenarios (the same utterances, 18 scenarios)
#   WORKSPACE: default ./DATASET-workspace. DATA: the folder holding banking77/ and hwu64/ (default ../shared/data).
#   EVAL_LIMIT: evaluate a deterministic hash-order sample of that many test rows (default: the whole test set).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dataset="${1:?usage: examples/intent/run.sh banking77|hwu64|hwu64-scenarios [WORKSPACE]}"
export REFINERY_WORKSPACE="${2:-$dataset-workspace}"
data="${DATA:-$here/../../../shared/data}"
refinery=(refinery)
command -v refinery >/dev/null || refinery=("$here/../../.venv/bin/refinery")
case "$dataset" in
  banking77) train="$data/banking77/train.csv"; test="$data/banking77/test.csv"; label=category ;;
  hwu64) train="$data/hwu64/train.csv"; test="$data/hwu64/test.csv"; label=intent ;;
  hwu64-scenarios)
    # the scenario is the intent's prefix before its first "_" (alarm_query -> alarm): derived files, same rows
    mkdir -p "$REFINERY_WORKSPACE/data"
    for split in train test; do
      python3 - "$data/hwu64/$split.csv" "$REFINERY_WORKSPACE/data/$split.csv" <<'PY'
import csv, sys
with open(sys.argv[1], newline="", encoding="utf-8") as src, open(sys.argv[2], "w", newline="", encoding="utf-8") as dst:
    rows = csv.DictReader(src)
    out = csv.writer(dst)
    out.writerow(["text", "scenario"])
    for row in rows:
        out.writerow([row["text"], row["intent"].split("_", 1)[0]])
PY
    done
    train="$REFINERY_WORKSPACE/data/train.csv"; test="$REFINERY_WORKSPACE/data/test.csv"; label=scenario ;;
  *) echo "unknown dataset $dataset (banking77, hwu64 or hwu64-scenarios)" >&2; exit 2 ;;
esac
limit=()
[ -n "${EVAL_LIMIT:-}" ] && limit=(--limit "$EVAL_LIMIT")
set -x
"${refinery[@]}" ingest "$train" --map text=user --map "$label=assistant" --name "$dataset-train"
"${refinery[@]}" ingest "$test" --map text=user --map "$label=assistant" --eval-set "$dataset-test"
"${refinery[@]}" scan
snapshot=$("${refinery[@]}" snapshot create --policy "$here/policy.yaml" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["snapshot_id"])')
adapter=$("${refinery[@]}" train --snapshot "$snapshot" --config "$here/train.yaml" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["adapter_id"])')
"${refinery[@]}" eval --adapter "$adapter" --eval-set "$dataset-test" "${limit[@]}" --config "$here/eval.yaml" --json || true
"${refinery[@]}" promote "$adapter" || true
"${refinery[@]}" lineage "$adapter"
