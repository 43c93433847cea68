#!/usr/bin/env bash
# The slices of `megacontext bench longctx` that measure issue 7's targets on a 2-core CPU, then
# the leaderboard over them. The full grid is days of CPU time here (docs/evaluation.md).
#   1. passkey at 4k, 16k and 100k tokens, W_max 512 (MegaContext >= 0.9 at 100k; recency ~ 0);
#   2. the needle tasks (passkey, multi-key needle) at every length measured, against RAG-MiniLM;
#   3. long-document LM at 16k tokens, W_max 256/512/1024 (MegaContext NLL below recency).
# Systems that need no LensNet and those that do run as separate slices (same samples: each
# cell is seeded by task, length and sample index), so either half can be rerun alone.
# PART rest measures the rest of the task list at 4k and 16k (vartrack, lines, facts), the needle
# task at 100k, passkey at 1M tokens (half the samples; RAG-MiniLM would embed 1M tokens per
# sample, hours here, so it is left out there), passkey at W_max 256 and 1024, and the other
# peers (full context, RETRO-lite, MemGPT-lite, LLMLingua-style pruning).
# Usage: scripts/longctx-targets.sh [RESULTS_DIR] [SAMPLES] [PART]
#   (defaults: results, 10, all; PART is baselines, lens, all or rest)
# Needs the packaged focus bundle (make focus-models) for the MegaContext variants.
set -euo pipefail
OUT="${1:-results}"
SAMPLES="${2:-10}"
PART="${3:-all}"
MC="${MEGACONTEXT:-.venv/bin/megacontext}"
mkdir -p "$OUT"
BASELINES="recency,streamingllm,rag-bm25,rag-minilm,megacontext-recency,megacontext-oracle"
LM_BASELINES="recency,streamingllm,rag-bm25,compressive,megacontext-recency,megacontext-oracle"
LENS="megacontext,megacontext-gists-only"

slice() {  # name tasks lengths budgets systems [samples]
    echo "== longctx slice $1: $2 @ $3 / $4: $5"
    MEGACONTEXT_LONGCTX_TASKS="$2" MEGACONTEXT_LONGCTX_LENGTHS="$3" \
    MEGACONTEXT_LONGCTX_BUDGETS="$4" MEGACONTEXT_LONGCTX_SYSTEMS="$5" \
    MEGACONTEXT_LONGCTX_SAMPLES="${6:-$SAMPLES}" \
        "$MC" bench longctx --json "$OUT/longctx-$1.json"
}

if [ "$PART" = rest ]; then
    slice tasks-baselines vartrack,lines,facts 4096,16384 512 "$BASELINES"
    slice tasks-lens vartrack,lines,facts 4096,16384 512 "$LENS"
    slice needle100k-baselines needle 100000 512 "$BASELINES"
    slice needle100k-lens needle 100000 512 "$LENS"
    slice passkey1m passkey 1000000 512 "megacontext,recency,rag-bm25" "$(( (SAMPLES + 1) / 2 ))"
    slice passkey-budgets passkey 4096,16384,100000 256,1024 \
        "megacontext,megacontext-oracle,megacontext-recency,recency,rag-bm25"
    slice passkey-budgets-minilm passkey 4096,16384 256,1024 rag-minilm
    slice peers passkey,vartrack 4096,16384 512 "full,retro-lite,memgpt-lite,llmlingua"
    slice longdoc-peers longdoc 16384 256,512,1024 "full,retro-lite,memgpt-lite,llmlingua"
elif [ "$PART" != lens ]; then
    slice passkey-baselines passkey 4096,16384,100000 512 "$BASELINES"
    slice needle-baselines needle 4096,16384 512 "$BASELINES"
    slice longdoc-baselines longdoc 16384 256,512,1024 "$LM_BASELINES"
fi
if [ "$PART" != baselines ] && [ "$PART" != rest ]; then
    slice passkey-lens passkey 4096,16384,100000 512 "$LENS"
    slice needle-lens needle 4096,16384 512 "$LENS"
    slice longdoc-lens longdoc 16384 256,512,1024 "$LENS"
fi
if [ "$PART" = all ]; then
    # Target 1 again with twice the samples (the first SAMPLES are the slices' own samples);
    # the leaderboard takes these cells from this later file.
    slice passkey100k-more passkey 100000 512 "megacontext,megacontext-oracle,recency" \
        "$((2 * SAMPLES))"
fi
files=()
for f in "$OUT"/longctx-{passkey,needle,longdoc,tasks,needle100k}-{baselines,lens}.json \
    "$OUT"/longctx-passkey100k-more.json "$OUT"/longctx-passkey1m.json \
    "$OUT"/longctx-passkey-budgets{,-minilm}.json "$OUT"/longctx-{,longdoc-}peers.json; do
    [ -f "$f" ] && files+=("$f")
done
"$MC" leaderboard "${files[@]}" --out "$OUT/leaderboard"
