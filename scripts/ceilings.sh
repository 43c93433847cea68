#!/usr/bin/env bash
# The full-context ceiling of a base on every long-context task, beside recency and RAG-BM25 at
# W_max 512, in each prompt style (issue 13 §3). Every system reads the same samples.
#   Usage: scripts/ceilings.sh [BASE] [OUT_DIR] [SAMPLES] [STYLES]
#   e.g.   scripts/ceilings.sh smollm2 results/ceilings 20 "raw chat"
# Full context at 8k: 8,000 history tokens plus the prompt stay within SmolLM2's 8,192 positions.
set -euo pipefail
BASE="${1:-smollm2}"
OUT="${2:-results/ceilings}"
SAMPLES="${3:-20}"
STYLES="${4:-raw chat}"
MC="${MC:-.venv/bin/megacontext}"
mkdir -p "$OUT"
export MEGACONTEXT_LONGCTX_TASKS=passkey,needle,vartrack,lines,facts,longdoc
export MEGACONTEXT_LONGCTX_LENGTHS=1024,4096,8000
export MEGACONTEXT_LONGCTX_SAMPLES="$SAMPLES"
for style in $STYLES; do
    MEGACONTEXT_LONGCTX_BUDGETS=512 MEGACONTEXT_LONGCTX_SYSTEMS=recency,rag-bm25 \
        "$MC" bench longctx --base "$BASE" --prompt "$style" \
        --json "$OUT/longctx-$BASE-$style-w512.json"
    MEGACONTEXT_LONGCTX_BUDGETS=8192 MEGACONTEXT_LONGCTX_SYSTEMS=full \
        "$MC" bench longctx --base "$BASE" --prompt "$style" \
        --json "$OUT/longctx-$BASE-$style-full.json"
done
