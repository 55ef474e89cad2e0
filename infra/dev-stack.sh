#!/usr/bin/env bash
# Local dev stack on loopback: an S3-compatible server (moto) and an MLflow server
# on a SQLite store, for trying the cluster configuration on one machine.
#   infra/dev-stack.sh start   # prints the variables to export
#   infra/dev-stack.sh stop
set -euo pipefail
cd "$(dirname "$0")/.."
STATE=.devstack
BIN=.venv/bin
S3_PORT=${S3_PORT:-9000}
MLFLOW_PORT=${MLFLOW_PORT:-5000}

case "${1:-}" in
  start)
    mkdir -p "$STATE"
    "$BIN/python" -m moto.server -H 127.0.0.1 -p "$S3_PORT" >"$STATE/s3.log" 2>&1 &
    echo $! >"$STATE/s3.pid"
    "$BIN/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" \
      --backend-store-uri "sqlite:///$PWD/$STATE/mlflow.db" \
      --artifacts-destination "$PWD/$STATE/artifacts" >"$STATE/mlflow.log" 2>&1 &
    echo $! >"$STATE/mlflow.pid"
    cat <<VARS
export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
VARS
    ;;
  stop)
    for svc in s3 mlflow; do
      if [ -f "$STATE/$svc.pid" ]; then kill "$(cat "$STATE/$svc.pid")" 2>/dev/null || true; rm -f "$STATE/$svc.pid"; fi
    done
    ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
