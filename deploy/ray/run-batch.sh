#!/usr/bin/env bash
# On the head node: reconstruct every session under $NEUROCINE_SESSIONS with the ensemble under
# $NEUROCINE_ENSEMBLE (one model folder per member, e.g. from `neurocine train --seeds`), one Ray task per
# (trial, encoder) on the cluster's GPUs. Rerun it after a crash or a preemption: finished trials are skipped.
set -euo pipefail
: "${NEUROCINE_VENV:=/opt/neurocine}"
# Ray >= 2.52 authenticates with a token: one token, on a path every node can read (shared home or file system).
export RAY_AUTH_MODE=token
: "${RAY_AUTH_TOKEN_PATH:=$HOME/.ray/auth_token}"
export RAY_AUTH_TOKEN_PATH
: "${NEUROCINE_SESSIONS:?folder of session files on the shared file system}"
: "${NEUROCINE_ENSEMBLE:?folder written by neurocine train --seeds (seed<k>/onnx/<mouse>/)}"
: "${NEUROCINE_MOUSE:?the mouse of the sessions, as named in the ensemble}"
: "${NEUROCINE_BATCH_OUT:?output folder on the shared file system}"
models=()
for m in "$NEUROCINE_ENSEMBLE"/seed*/onnx/"$NEUROCINE_MOUSE"/; do models+=(--model "$m"); done
"$NEUROCINE_VENV/bin/neurocine" batch --address auto --sessions "$NEUROCINE_SESSIONS"/*.ncr "${models[@]}" \
    --backend onnx --provider cuda --iterations 1000 --max-retries 3 --out "$NEUROCINE_BATCH_OUT"
