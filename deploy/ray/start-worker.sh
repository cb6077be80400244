#!/usr/bin/env bash
# Join a node to the cluster started by start-head.sh. Every node needs the same neurocine and Ray versions
# and the same paths to the sessions, models and output folder (a shared file system).
# Usage: deploy/ray/start-worker.sh HEAD_IP[:PORT]
set -euo pipefail
: "${NEUROCINE_VENV:=/opt/neurocine}"
# Ray >= 2.52 authenticates with a token: one token, on a path every node can read (shared home or file system).
export RAY_AUTH_MODE=token
: "${RAY_AUTH_TOKEN_PATH:=$HOME/.ray/auth_token}"
export RAY_AUTH_TOKEN_PATH
head="${1:?usage: start-worker.sh HEAD_IP[:PORT]}"
[[ "$head" == *:* ]] || head="$head:6379"
exec "$NEUROCINE_VENV/bin/ray" start --address="$head" --disable-usage-stats
