#!/usr/bin/env bash
# Install and start the SQS peers on loopback, without Docker.
#
#   bench/peers.sh install [moto|localstack|tools|all]
#                                      moto -> bench/.peers/moto, LocalStack -> bench/.peers/localstack,
#                                      py-spy -> bench/.peers/tools (for run_sqs.py --profile)
#   bench/peers.sh start moto PORT     foreground: moto_server on 127.0.0.1:PORT
#   bench/peers.sh start localstack PORT
#   bench/peers.sh start wharf PORT ADMIN_PORT DATA_DIR [verify]
#                                      foreground: wharf-broker from the project venv, with a
#                                      config written to DATA_DIR/broker.toml (durable default;
#                                      "verify": SigV4 checked against DATA_DIR/credentials.toml)
#
# run_sqs.py calls this script; it pins each server with taskset itself. Copied from
# shared/peers/ (install_localstack.sh, start_localstack.sh, requirements-localstack.txt) with
# the venv moved under bench/.peers.
set -euo pipefail
BENCH="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$BENCH")"
PEERS="${WHARF_BENCH_PEERS:-$BENCH/.peers}"

# pip warns once per package about the machine's optional local indexes; keep real errors.
quiet() { grep -v "is ignored: it is neither a file nor a directory" || true; }

find_py312() {
  local c
  for c in python3.13 python3.12; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null; then
      command -v "$c"; return 0
    fi
  done
  for c in "$HOME"/.pyenv/versions/3.13*/bin/python3 "$HOME"/.pyenv/versions/3.12*/bin/python3; do
    if [ -x "$c" ]; then echo "$c"; return 0; fi
  done
  return 1
}

install_moto() {
  if [ -x "$PEERS/moto/bin/moto_server" ]; then return 0; fi
  python3 -m venv "$PEERS/moto"
  "$PEERS/moto/bin/pip" install -q --upgrade pip
  "$PEERS/moto/bin/pip" install -q -r "$BENCH/requirements-moto.txt" 2>&1 | quiet
  echo "moto: $("$PEERS/moto/bin/pip" show moto | grep ^Version)"
}

install_localstack() {
  if [ -x "$PEERS/localstack/bin/python" ] && "$PEERS/localstack/bin/python" -c 'import localstack' 2>/dev/null; then
    return 0
  fi
  local py
  py="${LOCALSTACK_PYTHON:-$(find_py312)}" || { echo "need Python >= 3.12 for localstack-core 2026.x" >&2; exit 1; }
  "$py" -m venv "$PEERS/localstack"
  "$PEERS/localstack/bin/pip" install -q --upgrade pip
  "$PEERS/localstack/bin/pip" install -q -r "$BENCH/requirements-localstack.txt" 2>&1 | quiet
  echo "localstack: $("$PEERS/localstack/bin/pip" show localstack-core | grep ^Version)"
}

install_tools() {  # py-spy, for run_sqs.py --profile
  if [ -x "$PEERS/tools/bin/py-spy" ]; then return 0; fi
  python3 -m venv "$PEERS/tools"
  "$PEERS/tools/bin/pip" install -q py-spy 2>&1 | quiet
}

start_moto() {
  exec "$PEERS/moto/bin/moto_server" -H 127.0.0.1 -p "$1"
}

start_localstack() {
  local port="$1"
  export OVERRIDE_IN_DOCKER=0                  # host mode: do not look for Docker
  export GATEWAY_LISTEN="127.0.0.1:${port}"    # loopback only
  export LOCALSTACK_HOST="127.0.0.1:${port}"
  export SQS_ENDPOINT_STRATEGY=off             # QueueUrl = http://127.0.0.1:PORT/<account>/<name>
  export SERVICES=sqs,sns EAGER_SERVICE_LOADING=1
  export SQS_DISABLE_CLOUDWATCH_METRICS=1
  export DISABLE_EVENTS=1 SKIP_SSL_CERT_DOWNLOAD=1 DNS_ADDRESS=0   # nothing leaves the machine
  export FILESYSTEM_ROOT="${LOCALSTACK_FS_ROOT:-${TMPDIR:-/tmp}/wharf-bench-localstack-$port}"
  mkdir -p "$FILESYSTEM_ROOT"
  exec "$PEERS/localstack/bin/python" -m localstack.runtime.main
}

start_wharf() {
  local port="$1" admin="$2" data="$3" verify="${4:-}"
  local anonymous=true credentials="" storage_key
  mkdir -p "$data"
  # the [storage] key as conf/broker.toml documents it today (data_dir; earlier drafts: path)
  if grep -q '^data_dir' "$ROOT/conf/broker.toml"; then
    storage_key="data_dir = \"$data/store\""
  else
    storage_key="path = \"$data/broker.db\""
  fi
  if [ "$verify" = "verify" ]; then  # SigV4 verified against a credentials file
    anonymous=false credentials="$data/credentials.toml"
    cat >"$credentials" <<TOML
[[keys]]
access_key_id = "AKIDWHARFBENCH000000"
secret_access_key = "wharf-bench-secret-key-not-a-secret"
principal = "arn:aws:iam::000000000000:user/bench"
TOML
  fi
  cat >"$data/broker.toml" <<TOML
# Written by bench/peers.sh: durability is the default (every acknowledged write fsync'd).
[api]
host = "127.0.0.1"
port = $port

[auth]
anonymous = $anonymous
credentials_file = "$credentials"

[storage]
backend = "sqlite"
$storage_key

[admin]
host = "127.0.0.1"
port = $admin

[logging]
level = "warning"
TOML
  exec "$ROOT/.venv/bin/wharf-broker" serve --config "$data/broker.toml"
}

cmd="${1:-}"; shift || true
case "$cmd" in
  install)
    mkdir -p "$PEERS"
    what="${1:-all}"
    case "$what" in
      moto) install_moto ;;
      localstack) install_localstack ;;
      tools) install_tools ;;
      all) install_moto; install_localstack; install_tools ;;
      *) echo "install: moto|localstack|tools|all" >&2; exit 2 ;;
    esac ;;
  start)
    peer="${1:?peer}"; shift
    case "$peer" in
      moto) start_moto "${1:?port}" ;;
      localstack) start_localstack "${1:?port}" ;;
      wharf) start_wharf "${1:?port}" "${2:?admin port}" "${3:?data dir}" "${4:-}" ;;
      *) echo "start: moto|localstack|wharf" >&2; exit 2 ;;
    esac ;;
  *) sed -n '2,12p' "$0"; exit 2 ;;
esac
