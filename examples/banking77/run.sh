#!/usr/bin/env bash
# banking77 from ingest to gate verdict: the README's command sequence as one script.
# Usage: examples/banking77/run.sh [WORKSPACE] (default ./banking77-workspace); DATA=../shared/data/banking77.
# EVAL_LIMIT (default 400) evaluates a deterministic hash-order sample of test.csv; unset it for all 3,080.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export REFINERY_WORKSPACE="${1:-banking77-workspace}"
data="${DATA:-$here/../../../shared/data/banking77}"
limit="${EVAL_LIMIT:-400}"
refinery=(refinery)
command -v refinery >/dev/null || refinery=("$here/../../.venv/bin/refinery")
set -x
"${refinery[@]}" ingest "$data/train.csv" --map text=user --map category=assistant --template intent --name banking77-train
"${refinery[@]}" ingest "$data/test.csv" --map text=user --map category=assistant --template intent --eval-set banking77-test
"${refinery[@]}" scan --checks exact,exact_prompt,near_dup,contamination,inconsistency
snapshot=$("${refinery[@]}" snapshot create --policy "$here/policy.yaml" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["snapshot_id"])')
adapter=$("${refinery[@]}" train --snapshot "$snapshot" --config "$here/train.yaml" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["adapter_id"])')
"${refinery[@]}" eval --adapter "$adapter" --eval-set banking77-test --limit "$limit" --config "$here/eval.yaml" --json || true
"${refinery[@]}" promote "$adapter" || true
"${refinery[@]}" lineage "$adapter"
