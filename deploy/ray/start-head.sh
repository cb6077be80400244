#!/usr/bin/env bash
# Start the head of a multi-node Ray cluster for `neurocine batch` / `neurocine train --seeds` (run once, on
# the machine that will also run the driver). Ray's own CLI comes with `pip install 'neurocine[cluster]'`.
# Usage: deploy/ray/start-head.sh [PORT]       then on every other node: deploy/ray/start-worker.sh HEAD_IP[:PORT]
set -euo pipefail
: "${NEUROCINE_VENV:=/opt/neurocine}"
# Ray >= 2.52 authenticates with a token: one token, on a path every node can read (shared home or file system).
export RAY_AUTH_MODE=token
: "${RAY_AUTH_TOKEN_PATH:=$HOME/.ray/auth_token}"
export RAY_AUTH_TOKEN_PATH
port="${1:-6379}"
[[ -s "$RAY_AUTH_TOKEN_PATH" ]] || "$NEUROCINE_VENV/bin/ray" get-auth-token --generate >/dev/null
# GPUs are detected; one task per GPU when the provider is CUDA (batch asks num_gpus=1 per task).
exec "$NEUROCINE_VENV/bin/ray" start --head --port="$port" --disable-usage-stats
