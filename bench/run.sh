#!/usr/bin/env bash
# image-syncer vs skopeo on two local registries. See bench/README.md.
#
#   bench/run.sh [--quick] [--flaky-only]
#   bench/run.sh --latency MS [--quick]
#
# Builds image-syncer in release, starts a source and a target registry (Debian's
# docker-registry) on free 127.0.0.1 ports with temporary storage, fills the source with four
# workloads (bench/populate.py) and times cold syncs, warm re-syncs and peak memory of
# image-syncer and `skopeo sync`, plus a raw-copy floor (bench/floor.py), then W1 cold through
# fault-injecting proxies (10 % and 20 % of requests failing: completion and time). Prints a
# Markdown table and the machine it ran on; the same table is written to
# <target dir>/bench/results-<mode>.md. --flaky-only runs W1 and the flaky rows only.
# --latency MS: both registries over TLS (a local CA) behind TCP proxies adding MS milliseconds
# each way (testkit's latency-proxy); W1, W4 with 300 and 1000 images, skopeo where it is quick
# enough, the floor for W1 (--quick: W4 300 only, 1 round). Results in results-latency-MSms.md.
# All traffic goes to 127.0.0.1. Every wait and every tool run is bounded in time.
set -euo pipefail

usage() {
  sed -n '4,17p' "$0" | sed 's/^# \{0,1\}//'
}

QUICK=0 FLAKY_ONLY=0 LATENCY="" LATENCY_GIVEN=0
args=("$@")
for ((a = 0; a < ${#args[@]}; a++)); do
  arg="${args[a]}"
  case "$arg" in
    --quick) QUICK=1 ;;
    --flaky-only) FLAKY_ONLY=1 ;;
    --latency) a=$((a + 1)); LATENCY="${args[a]:-}" LATENCY_GIVEN=1 ;;
    --latency=*) LATENCY="${arg#--latency=}" LATENCY_GIVEN=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
  esac
done
if [ "$LATENCY_GIVEN" = 1 ]; then
  [[ "$LATENCY" =~ ^[0-9]+$ ]] || { echo "run.sh: --latency needs milliseconds (each way), e.g. --latency 20" >&2; exit 2; }
  [ "$FLAKY_ONLY" = 0 ] || { echo "run.sh: --latency and --flaky-only do not go together" >&2; exit 2; }
fi

# skopeo (containers/image) records in a BoltDB cache where it has seen each blob, and on a later
# run mounts a blob from another repository of the same registry instead of uploading it: its
# cold runs after the first would not be cold. So each skopeo run starts with an empty cache. As
# root, whose cache is the fixed /var/lib/containers/cache, the script re-runs itself in a private
# mount namespace and puts a tmpfs over that directory (nothing outside the namespace changes);
# otherwise XDG_DATA_HOME points into the work directory (see SKOPEO_CACHE below).
if [ "$(id -u)" = 0 ] && [ -z "${IMAGE_SYNCER_BENCH_NS:-}" ] && command -v unshare >/dev/null 2>&1 &&
  unshare --mount --propagation private true 2>/dev/null; then
  mkdir -p /var/lib/containers/cache # where skopeo run as root creates its cache anyway
  IMAGE_SYNCER_BENCH_NS=1 exec unshare --mount --propagation private bash "$0" "$@"
fi

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BENCH="$ROOT/bench"
cd "$ROOT"

# --- sizes -------------------------------------------------------------------------------
MIB=$((1 << 20))
W1_COUNT=20 W1_LAYERS=3 W1_LAYER=$MIB
W2_COUNT=10 W2_LAYER=$MIB
W4_LAYER=1024
if [ "$QUICK" = 1 ]; then
  MODE=quick RUNS=1 W3_LAYER=$((64 * MIB)) W4_COUNT=100 W4_STEPS="30 100"
else
  MODE=full RUNS=3 W3_LAYER=$((1024 * MIB)) W4_COUNT=1000 W4_STEPS="100 300 1000"
fi
FLAKY_RATES="10 20" # percent of requests failing: half 500s, a quarter 429s, a quarter drops
if [ "$FLAKY_ONLY" = 1 ]; then MODE="$MODE-flaky"; fi
# Latency mode: W1 and W4 (300, 1000 images; --quick: 300 only, 1 round), no W2/W3/flaky rows.
# skopeo copies one image after another: a skopeo figure that takes longer than SKOPEO_MAX
# seconds is measured once (round 1), and a workload it would take longer on is skipped.
SKOPEO_MAX="${SKOPEO_MAX:-120}"
if [ -n "$LATENCY" ]; then
  if [ "$QUICK" = 1 ]; then
    MODE="latency-${LATENCY}ms-quick" RUNS=1 W4_COUNT=300 LAT_W4="300" LAT_W1=0
  else
    MODE="latency-${LATENCY}ms" RUNS=3 W4_COUNT=1000 LAT_W4="300 1000" LAT_W1=1
  fi
fi
RUN_TIMEOUT=900     # seconds, one tool run
START_TIMEOUT=15    # seconds, a registry answering /v2/

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }
BENCH_T0=$EPOCHREALTIME

# --- prerequisites -------------------------------------------------------------------------
REGISTRY_BIN=/usr/bin/docker-registry
[ -x "$REGISTRY_BIN" ] || REGISTRY_BIN="$(command -v docker-registry || true)"

if [ ! -x /usr/bin/time ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing GNU time (Debian package time) ..."
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends time >/dev/null
  fi
fi

missing=()
[ -n "$REGISTRY_BIN" ] && [ -x "$REGISTRY_BIN" ] || missing+=("docker-registry (Debian: apt-get install -y docker-registry)")
command -v skopeo >/dev/null 2>&1 || missing+=("skopeo (Debian: apt-get install -y skopeo)")
command -v python3 >/dev/null 2>&1 || missing+=("python3 (Debian: apt-get install -y python3)")
[ -x /usr/bin/time ] || missing+=("/usr/bin/time, GNU time (Debian: apt-get install -y time)")
command -v timeout >/dev/null 2>&1 || missing+=("timeout (Debian: coreutils)")
command -v cargo >/dev/null 2>&1 || missing+=("cargo (a Rust toolchain)")
if [ ${#missing[@]} -gt 0 ]; then
  echo "run.sh: missing prerequisites:" >&2
  printf '  - %s\n' "${missing[@]}" >&2
  exit 1
fi

# --- build ---------------------------------------------------------------------------------
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
log "building image-syncer (release) ..."
cargo build --release -p image-syncer-cli >&2
cargo build --release -p image-syncer-testkit --bin fault-proxy --bin latency-proxy >&2
BIN="$TARGET_DIR/release/image-syncer"
PROXY_BIN="$TARGET_DIR/release/fault-proxy"
LAT_BIN="$TARGET_DIR/release/latency-proxy"
[ -x "$BIN" ] || die "no binary at $BIN after the build"
[ -x "$PROXY_BIN" ] || die "no fault proxy at $PROXY_BIN after the build"
[ -x "$LAT_BIN" ] || die "no latency proxy at $LAT_BIN after the build"
# The binary's default (adaptive) concurrency is what is measured, in both modes, unless JOBS is
# set (JOBS=8 gives the fixed concurrency the loopback figures before issue #15 were taken at).
JOBS_ARGS=()
if [ -n "${JOBS:-}" ]; then JOBS_ARGS=(--jobs "$JOBS"); fi

# --- registries ----------------------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/image-syncer-bench.XXXXXX")"
REG_PIDS=() PROXY_PIDS=() PROXY_FDS=() LAT_PIDS=()
cleanup() {
  local pid
  stop_proxies
  for pid in "${LAT_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  for pid in "${REG_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${REG_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

answers() { # PORT: does the registry answer GET /v2/ ? (over TLS, trusting $CA, when set)
  python3 - "$1" "${CA:-}" <<'EOF' 2>/dev/null
import http.client, ssl, sys
if sys.argv[2]:
    c = http.client.HTTPSConnection("127.0.0.1", int(sys.argv[1]), timeout=2,
                                    context=ssl.create_default_context(cafile=sys.argv[2]))
else:
    c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=2)
c.request("GET", "/v2/")
sys.exit(0 if c.getresponse().status == 200 else 1)
EOF
}

# make_tls DIR: a CA (DIR/ca.pem, also DIR/certs/ca.crt for skopeo's cert dirs) and a server
# certificate for IP 127.0.0.1 signed by it (DIR/server.pem, DIR/server.key), with openssl
make_tls() {
  local dir="$1"
  mkdir -p "$dir/certs"
  (
    cd "$dir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
      -out ca.pem -days 2 -subj "/CN=image-syncer bench CA"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key \
      -out server.csr -subj "/CN=127.0.0.1"
    printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >ext.cnf
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
      -days 2 -extfile ext.cnf
  ) >"$dir/openssl.log" 2>&1 || die "openssl failed: $(tail -5 "$dir/openssl.log")"
  cp "$dir/ca.pem" "$dir/certs/ca.crt"
}

# start_registry NAME: sets PORT_<NAME>; storage in $WORK/NAME/storage
start_registry() {
  local name="$1" dir="$WORK/$1" attempt port pid i tls=""
  if [ -n "${CA:-}" ]; then
    tls="$(printf '  tls:\n    certificate: %s\n    key: %s' "$WORK/tls/server.pem" "$WORK/tls/server.key")"
  fi
  for attempt in 1 2 3 4 5; do
    rm -rf "$dir"
    mkdir -p "$dir/storage"
    port="$(free_port)"
    cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
  secret: image-syncer-bench
$tls
EOF
    "$REGISTRY_BIN" serve "$dir/config.yml" >"$dir/registry.log" 2>&1 </dev/null &
    pid=$!
    REG_PIDS+=("$pid")
    for ((i = 0; i < START_TIMEOUT * 10; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      if answers "$port"; then
        printf -v "PORT_$name" '%s' "$port"
        return 0
      fi
      sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    log "registry $name did not start on port $port (attempt $attempt): $(tail -3 "$dir/registry.log")"
  done
  die "could not start the $name registry"
}

# start_proxy NAME UPSTREAM SEED PERCENT: a fault proxy (crates/testkit, bin fault-proxy) in front
# of UPSTREAM failing PERCENT % of requests; sets PORT_<NAME>. It runs until its stdin (a fifo we
# hold open) closes, then logs what it injected to $WORK/NAME.log.
start_proxy() {
  local name="$1" fifo="$WORK/$1.in" fd i r
  r="$4"
  rm -f "$fifo" && mkfifo "$fifo"
  "$PROXY_BIN" "$2" "$3" "$(python3 -c "print($r / 200)")" "$(python3 -c "print($r / 400)")" \
    "$(python3 -c "print($r / 400)")" <"$fifo" >"$WORK/$name.port" 2>"$WORK/$name.log" &
  PROXY_PIDS+=($!)
  exec {fd}>"$fifo"
  PROXY_FDS+=("$fd")
  for ((i = 0; i < START_TIMEOUT * 10; i++)); do
    if [ -s "$WORK/$name.port" ]; then
      printf -v "PORT_$name" '%s' "$(head -n 1 "$WORK/$name.port")"
      return 0
    fi
    sleep 0.1
  done
  die "the fault proxy $name did not start: $(cat "$WORK/$name.log")"
}
stop_proxies() {
  local fd pid
  for fd in "${PROXY_FDS[@]}"; do exec {fd}>&-; done
  for pid in "${PROXY_PIDS[@]}"; do timeout 10 tail --pid="$pid" -f /dev/null || kill "$pid" 2>/dev/null || true; done
  PROXY_FDS=() PROXY_PIDS=()
}

# Empties the target registry between runs (no request is in flight then; the registry keeps no
# cache in this configuration), so that a 1 GiB workload does not pile up on disk.
wipe_target() { rm -rf "$WORK/target/storage/docker"; }

# start_latency_proxy NAME UPSTREAM_PORT: a latency proxy (crates/testkit, bin latency-proxy)
# adding $LATENCY ms each way in front of 127.0.0.1:UPSTREAM_PORT; sets PORT_<NAME>. Runs until
# the script ends (cleanup).
start_latency_proxy() {
  local name="$1" i
  "$LAT_BIN" --listen 127.0.0.1:0 --upstream "127.0.0.1:$2" --delay-ms "$LATENCY" \
    >"$WORK/$name.port" 2>"$WORK/$name.log" </dev/null &
  LAT_PIDS+=($!)
  for ((i = 0; i < START_TIMEOUT * 10; i++)); do
    if [ -s "$WORK/$name.port" ]; then
      printf -v "PORT_$name" '%s' "$(head -n 1 "$WORK/$name.port")"
      return 0
    fi
    sleep 0.1
  done
  die "the latency proxy $name did not start: $(cat "$WORK/$name.log")"
}

CA=""
if [ -n "$LATENCY" ]; then
  command -v openssl >/dev/null 2>&1 || die "openssl is needed for --latency (Debian: apt-get install -y openssl)"
  make_tls "$WORK/tls"
  CA="$WORK/tls/ca.pem"
fi
start_registry source
start_registry target
# RSRC/RDST: the registries themselves (populating, checking); SRC/DST: what the tools are
# pointed at, the same in loopback mode, the latency proxies in latency mode.
RSRC="127.0.0.1:$PORT_source"
RDST="127.0.0.1:$PORT_target"
SRC="$RSRC" DST="$RDST"
PY_TLS=()                                                   # populate.py / floor.py
ISYNC_TLS=(--insecure-registry "$DST")                      # image-syncer
SKOPEO_TLS=(--src-tls-verify=false --dest-tls-verify=false) # skopeo sync
if [ -n "$LATENCY" ]; then
  start_latency_proxy lsrc "$PORT_source"
  start_latency_proxy ldst "$PORT_target"
  SRC="127.0.0.1:$PORT_lsrc" DST="127.0.0.1:$PORT_ldst"
  PY_TLS=(--cafile "$CA")
  ISYNC_TLS=(--ca-file "$CA")
  SKOPEO_TLS=(--src-cert-dir "$WORK/tls/certs" --dest-cert-dir "$WORK/tls/certs")
  log "latency mode: $LATENCY ms each way (RTT $((2 * LATENCY)) ms), TLS with a local CA"
  log "source registry $RSRC behind $SRC, target registry $RDST behind $DST, work dir $WORK"
else
  log "source registry $SRC, target registry $DST, work dir $WORK"
fi
SRC_PATH="127.0.0.1_${SRC##*:}" # how image-syncer writes the source host into target paths

SKOPEO_CACHE="" SKOPEO_CACHE_NOTE="emptied before each run"
if [ -n "${IMAGE_SYNCER_BENCH_NS:-}" ]; then
  mount -t tmpfs -o size=256m,mode=0700 bench-skopeo-cache /var/lib/containers/cache ||
    die "cannot mount a tmpfs over /var/lib/containers/cache in the private namespace"
  SKOPEO_CACHE=/var/lib/containers/cache
elif [ "$(id -u)" != 0 ]; then
  export XDG_DATA_HOME="$WORK/xdg-data"
  SKOPEO_CACHE="$XDG_DATA_HOME/containers/cache"
else
  SKOPEO_CACHE_NOTE="NOT emptied (no unshare): skopeo cold runs after the first may mount blobs"
  log "warning: skopeo's blob-info cache is $SKOPEO_CACHE_NOTE"
fi
empty_skopeo_cache() {
  if [ -n "$SKOPEO_CACHE" ] && [ -d "$SKOPEO_CACHE" ]; then
    find "$SKOPEO_CACHE" -mindepth 1 -delete
  fi
}

# skopeo: accept anything, no mirrors or credentials from the machine's configuration
cat >"$WORK/policy.json" <<'EOF'
{"default": [{"type": "insecureAcceptAnything"}]}
EOF
: >"$WORK/registries.conf"
echo '{}' >"$WORK/auth.json"
export CONTAINERS_REGISTRIES_CONF="$WORK/registries.conf" REGISTRY_AUTH_FILE="$WORK/auth.json"

# --- populate ------------------------------------------------------------------------------
populate() {
  local t0=$EPOCHREALTIME
  python3 "$BENCH/populate.py" "$RSRC" "$@" "${PY_TLS[@]}" || die "populate.py $* failed"
  log "populated $1 in $(secs_since "$t0") s"
}
secs_since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$EPOCHREALTIME"; }

log "populating the source registry ($MODE mode) ..."
if [ -n "$LATENCY" ]; then
  if [ "$LAT_W1" = 1 ]; then populate w1 --count "$W1_COUNT" --layers "$W1_LAYERS" --layer-size "$W1_LAYER"; fi
  populate w4 --count "$W4_COUNT" --layer-size "$W4_LAYER"
else
populate w1 --count "$W1_COUNT" --layers "$W1_LAYERS" --layer-size "$W1_LAYER"
fi
if [ "$FLAKY_ONLY" = 0 ] && [ -z "$LATENCY" ]; then
  populate w2 --count "$W2_COUNT" --layer-size "$W2_LAYER"
  populate w3 --layer-size "$W3_LAYER" --tmpdir "$WORK"
  populate w4 --count "$W4_COUNT" --layer-size "$W4_LAYER"
fi

refs_w1=() refs_w2=() refs_w4=()
for ((i = 0; i < W1_COUNT; i++)); do refs_w1+=("$(printf 'bench/w1-%02d:1' "$i")"); done
for ((i = 0; i < W2_COUNT; i++)); do refs_w2+=("$(printf 'bench/w2-%02d:1' "$i")"); done
refs_w3=("bench/w3:1")
for ((i = 0; i < W4_COUNT; i++)); do refs_w4+=("$(printf 'bench/w4-%04d:1' "$i")"); done

# isync_def FILE PREFIX REF...: an image-syncer definition
isync_def() {
  local file="$1" prefix="$2" ref
  shift 2
  {
    echo "targetRepoPrefix: \"$DST/$prefix/\""
    if [ -z "$LATENCY" ]; then
      echo "registries:"
      echo "  \"$SRC\": { insecure: true }"
    fi
    echo "images:"
    for ref in "$@"; do echo "- source: \"$SRC/$ref\""; done
  } >"$file"
}

# skopeo_yaml FILE REF...: a `skopeo sync --src yaml` file
skopeo_yaml() {
  local file="$1" ref
  shift
  {
    echo "$SRC:"
    if [ -n "$LATENCY" ]; then
      echo "  tls-verify: true"
      echo "  cert-dir: \"$WORK/tls/certs\""
    else
      echo "  tls-verify: false"
    fi
    echo "  images:"
    for ref in "$@"; do echo "    ${ref%:*}: [\"${ref##*:}\"]"; done
  } >"$file"
}

# --- measuring -----------------------------------------------------------------------------
declare -A VALS # "w1.isync.cold" -> "3.21 3.10 3.40" (seconds), "...rss" -> KiB
LIMIT_NOTES=()
FAILED=0

# measure KEY LOG CMD...: runs CMD under GNU time and a timeout; appends wall seconds to
# VALS[KEY] and peak RSS (KiB) to VALS[KEY.rss], or FAIL to both. With MEASURE_LIMIT=SECS (skopeo
# in latency mode) a run stopped at that limit is not a failure: it appends TIMEOUT instead.
measure() {
  local key="$1" out="$2" t0 t1 secs rss rc=0
  shift 2
  t0=$EPOCHREALTIME
  /usr/bin/time -f '%M' -o "$out.time" timeout "${MEASURE_LIMIT:-$RUN_TIMEOUT}" "$@" >"$out" 2>&1 || rc=$?
  t1=$EPOCHREALTIME
  if [ "$rc" = 124 ] && [ -n "${MEASURE_LIMIT:-}" ]; then
    local progress
    progress="$(grep -c 'Copying image ref' "$out" || true)" # skopeo sync: one line per image
    log "$key: stopped after $MEASURE_LIMIT s (${progress:-?} images started)"
    VALS[$key]+="TIMEOUT "
    LIMIT_NOTES+=("$key: stopped after $MEASURE_LIMIT s, ${progress:-?} images started")
    return 0
  fi
  if [ "$rc" -ne 0 ]; then
    log "FAILED ($rc): $key: $*"
    tail -n 15 "$out" | sed 's/^/    /' >&2
    VALS[$key]+="FAIL "
    VALS[$key.rss]+="FAIL "
    FAILED=1
    return 0
  fi
  secs="$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$t0" "$t1")"
  rss="$(tail -n 1 "$out.time")"
  VALS[$key]+="$secs "
  VALS[$key.rss]+="$rss "
  log "$key: $secs s, peak RSS $((rss / 1024)) MiB"
}

# verify_target KEY REPO:TAG...: the manifests exist in the target (checked on run 1)
verify_target() {
  local key="$1"
  shift
  if ! python3 "$BENCH/populate.py" "$RDST" check "$@" "${PY_TLS[@]}" >&2; then
    log "FAILED: $key: the target misses images after a successful run"
    FAILED=1
    VALS[$key.verify]="FAIL"
  fi
}

run_isync() { # KEY DEF
  measure "$1" "$WORK/$1.log" "$BIN" --images-file "$2" "${ISYNC_TLS[@]}" "${JOBS_ARGS[@]}"
}

run_skopeo() { # KEY YAML DEST [--all]
  local key="$1" yaml="$2" dest="$3"
  shift 3
  empty_skopeo_cache
  MEASURE_LIMIT="${LATENCY:+$SKOPEO_MAX}" measure "$key" "$WORK/$key.log" skopeo --policy "$WORK/policy.json" sync --src yaml --dest docker \
    "$yaml" "$dest" "${SKOPEO_TLS[@]}" "$@"
}

# isync_targets PREFIX REF...: target repo:tag names under image-syncer's mapping
isync_targets() {
  local prefix="$1" ref
  shift
  for ref in "$@"; do echo "$prefix/$SRC_PATH/$ref"; done
}
skopeo_targets() { # skopeo sync (not --scoped) keeps the last path component
  local prefix="$1" ref
  shift
  for ref in "$@"; do echo "$prefix/${ref##*/}"; done
}

# workload W REFS_ARRAY_NAME COLD_RUNS [skopeo args...]: RUNS rounds; each round is image-syncer
# (cold, warm) then skopeo (cold, warm) [then the floor, for W1]. Rounds after COLD_RUNS do the
# warm re-sync only, on the last cold round's repositories.
workload() {
  local w="$1" arr="$2[@]" cold_runs="$3" r iprefix sprefix
  shift 3
  local refs=("${!arr}")
  local first_last=("${refs[0]}" "${refs[-1]}")
  skopeo_yaml "$WORK/$w-skopeo.yaml" "${refs[@]}"
  for ((r = 1; r <= RUNS; r++)); do
    if [ "$r" -le "$cold_runs" ]; then
      iprefix="isync-$w-r$r"
      sprefix="skopeo-$w-r$r"
      isync_def "$WORK/$w-$iprefix.yaml" "$iprefix" "${refs[@]}"
      run_isync "$w.isync.cold" "$WORK/$w-$iprefix.yaml"
      if [ "$r" = 1 ]; then verify_target "$w.isync" $(isync_targets "$iprefix" "${first_last[@]}"); fi
    fi
    run_isync "$w.isync.warm" "$WORK/$w-$iprefix.yaml"
    if [ "$w" = w4 ] && [ -z "$LATENCY" ]; then w4_scaling "$iprefix"; fi

    if [ -z "${SKOPEO_SKIP[$w]:-}" ]; then
      if [ "$r" -le "$cold_runs" ]; then
        run_skopeo "$w.skopeo.cold" "$WORK/$w-skopeo.yaml" "$DST/$sprefix" "$@"
        if [ "$r" = 1 ] && [[ "${VALS[$w.skopeo.cold]:-}" != *TIMEOUT* ]]; then
          verify_target "$w.skopeo" $(skopeo_targets "$sprefix" "${first_last[@]}")
        fi
      fi
      if [[ "${VALS[$w.skopeo.cold]:-}" != *TIMEOUT* ]]; then # not a warm re-sync otherwise
        run_skopeo "$w.skopeo.warm" "$WORK/$w-skopeo.yaml" "$DST/$sprefix" "$@"
      fi
      if [ -n "$LATENCY" ]; then skopeo_slow "$w"; fi
    fi

    if [ "$w" = w1 ]; then
      measure "w1.floor" "$WORK/w1-floor-r$r.log" python3 "$BENCH/floor.py" "${PY_TLS[@]}" "$SRC" "$DST" "floor-w1-r$r/" "${refs[@]}"
      if [ "$r" = 1 ]; then verify_target "w1.floor" "floor-w1-r$r/${refs[0]}" "floor-w1-r$r/${refs[-1]}"; fi
    fi
    # empty the target before the next cold round, and at the end
    if [ "$r" -lt "$cold_runs" ] || [ "$r" = "$RUNS" ]; then wipe_target; fi
  done
}

# Latency mode: skopeo figures over SKOPEO_MAX seconds are measured once. skopeo_slow W: after a
# round, whether one of skopeo's runs of W took longer (then W's later rounds skip skopeo).
declare -A SKOPEO_SKIP # w -> why skopeo is not run (again)
SKOPEO_NOTES=()
skopeo_slow() {
  local w="$1" kind v
  for kind in cold warm; do
    v="${VALS[$w.skopeo.$kind]:-}"
    v="${v% }" v="${v##* }"
    if [ -z "$v" ]; then continue; fi
    if [ "$v" = TIMEOUT ]; then
      SKOPEO_SKIP[$w]=1
      SKOPEO_NOTES+=("skopeo on $w: its $kind run was stopped after $SKOPEO_MAX s (see below); not run again")
      return 0
    fi
    if [ "$v" = FAIL ] || python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) > $SKOPEO_MAX else 1)" "${v:-0}"; then
      SKOPEO_SKIP[$w]=1
      SKOPEO_NOTES+=("skopeo on $w: measured in round 1 only (its $kind run took ${v} s, over $SKOPEO_MAX s)")
      return 0
    fi
  done
}

# W4 scaling: warm re-syncs of the first N images of the prefix image-syncer just filled
w4_scaling() {
  local prefix="$1" n
  for n in $W4_STEPS; do
    if [ "$n" = "$W4_COUNT" ]; then
      VALS[w4.isync.warm.n$n]="${VALS[w4.isync.warm]}" # the full warm re-sync is this step
      continue
    fi
    isync_def "$WORK/w4-$prefix-n$n.yaml" "$prefix" "${refs_w4[@]:0:n}"
    run_isync "w4.isync.warm.n$n" "$WORK/w4-$prefix-n$n.yaml"
  done
}

# flaky PERCENT R: W1 cold through fault proxies in front of both registries (fresh proxies, the
# same seeds, per tool), image-syncer with its defaults and `skopeo sync --retry-times 5`. Records
# the time and how many of the W1 images ended exact in the target (digest equal to the source's).
declare -A FLAKY # "20.isync" -> "12.3s:20/20 ..."
flaky() {
  local pct="$1" r="$2" tool t0 rc secs exact pairs ref prefix def
  for tool in isync skopeo; do
    start_proxy psrc "$SRC" "$((pct * 100 + r))" "$pct"
    start_proxy pdst "$DST" "$((pct * 100 + r + 50))" "$pct"
    local PSRC="127.0.0.1:$PORT_psrc" PDST="127.0.0.1:$PORT_pdst"
    prefix="flaky$pct-$tool-r$r"
    pairs=()
    if [ "$tool" = isync ]; then
      def="$WORK/$prefix.yaml"
      {
        echo "targetRepoPrefix: \"$PDST/$prefix/\""
        echo "registries:"
        echo "  \"$PSRC\": { insecure: true }"
        echo "images:"
        for ref in "${refs_w1[@]}"; do echo "- source: \"$PSRC/$ref\""; done
      } >"$def"
      for ref in "${refs_w1[@]}"; do pairs+=("$ref=$prefix/127.0.0.1_$PORT_psrc/$ref"); done
      t0=$EPOCHREALTIME rc=0
      timeout "$RUN_TIMEOUT" "$BIN" --images-file "$def" --insecure-registry "$PDST" "${JOBS_ARGS[@]}" \
        >"$WORK/$prefix.log" 2>&1 || rc=$?
    else
      {
        echo "$PSRC:"
        echo "  tls-verify: false"
        echo "  images:"
        for ref in "${refs_w1[@]}"; do echo "    ${ref%:*}: [\"${ref##*:}\"]"; done
      } >"$WORK/$prefix.yaml"
      for ref in "${refs_w1[@]}"; do pairs+=("$ref=$prefix/${ref##*/}"); done
      empty_skopeo_cache
      t0=$EPOCHREALTIME rc=0
      timeout "$RUN_TIMEOUT" skopeo --policy "$WORK/policy.json" sync --src yaml --dest docker \
        "$WORK/$prefix.yaml" "$PDST/$prefix" --src-tls-verify=false --dest-tls-verify=false \
        --retry-times 5 >"$WORK/$prefix.log" 2>&1 || rc=$?
    fi
    secs="$(secs_since "$t0")"
    stop_proxies
    exact="$(python3 "$BENCH/populate.py" "$DST" same "$SRC" "${pairs[@]}")"
    log "flaky $pct %: $tool: exit $rc, $exact/${#refs_w1[@]} exact, $secs s ($(tail -n 1 "$WORK/psrc.log" | sed 's/^fault-proxy: //') at the source, $(tail -n 1 "$WORK/pdst.log" | sed 's/^fault-proxy: //') at the target)"
    FLAKY[$pct.$tool]+="${secs}s:$exact/${#refs_w1[@]}:exit$rc "
  done
}

if [ -n "$LATENCY" ]; then
  if [ "$LAT_W1" = 1 ]; then
    log "W1 at $LATENCY ms each way: $W1_COUNT images x $W1_LAYERS x $((W1_LAYER / 1024)) KiB layers, $RUNS run(s)"
    workload w1 refs_w1 "$RUNS"
  fi
  for n in $LAT_W4; do
    declare -a "refs_w4n$n"
    eval "refs_w4n$n=(\"\${refs_w4[@]:0:n}\")"
    if [ "$n" != 300 ] && [ -n "${VALS[w4n300.skopeo.cold]:-}" ]; then
      # skopeo copies one image after another: its time grows with the count
      v="${VALS[w4n300.skopeo.cold]%% *}"
      if [ "$v" = TIMEOUT ] || [ "$v" = FAIL ]; then
        SKOPEO_SKIP[w4n$n]=1
        SKOPEO_NOTES+=("skopeo on w4n$n: not run (its W4-300 cold run did not finish within $SKOPEO_MAX s)")
      elif [ -n "${SKOPEO_SKIP[w4n300]:-}" ] ||
        python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) * $n / 300 > $SKOPEO_MAX else 1)" "$v" 2>/dev/null; then
        SKOPEO_SKIP[w4n$n]=1
        SKOPEO_NOTES+=("skopeo on w4n$n: not run (its W4-300 cold run took $v s; $n images would take about $(python3 -c "print(round($v * $n / 300))") s, over $SKOPEO_MAX s)")
      fi
    fi
    log "W4 at $LATENCY ms each way: $n images x 1 x $((W4_LAYER / 1024)) KiB layer, $RUNS run(s)"
    workload "w4n$n" "refs_w4n$n" "$RUNS"
  done
  for note in "${SKOPEO_NOTES[@]}"; do log "$note"; done
  FLAKY_RATES=""
fi
if [ "$FLAKY_ONLY" = 0 ] && [ -z "$LATENCY" ]; then
log "W1: $W1_COUNT images x $W1_LAYERS x $((W1_LAYER / 1024)) KiB layers, $RUNS run(s)"
workload w1 refs_w1 "$RUNS"
log "W2: $W2_COUNT multi-arch images (amd64+arm64), $RUNS run(s)"
workload w2 refs_w2 "$RUNS" --all
log "W3: one image with a $((W3_LAYER / MIB)) MiB layer, $RUNS run(s)"
workload w3 refs_w3 "$RUNS"
log "W4: $W4_COUNT images x 1 x $((W4_LAYER / 1024)) KiB layer, $RUNS run(s)"
workload w4 refs_w4 "$RUNS"
fi
for pct in $FLAKY_RATES; do
  for ((r = 1; r <= RUNS; r++)); do
    log "flaky: W1 cold through proxies failing $pct % of requests, run $r"
    flaky "$pct" "$r"
  done
  wipe_target
done

# --- report --------------------------------------------------------------------------------
for key in "${!VALS[@]}"; do printf '%s %s\n' "$key" "${VALS[$key]% }"; done | sort >"$WORK/values.txt"

# The table, from the raw values (seconds; KiB for *.rss), in one Python run.
if [ -z "$LATENCY" ]; then
BENCH_SIZES="$W1_COUNT $W1_LAYERS $W1_LAYER $W2_COUNT $W3_LAYER $W4_COUNT" \
  BENCH_W4_STEPS="$W4_STEPS" python3 - "$WORK/values.txt" >"$WORK/table.md" <<'EOF'
import os, statistics, sys

vals = {}
for line in open(sys.argv[1]):
    key, *v = line.split()
    vals[key] = v
w1_count, w1_layers, w1_layer, w2_count, w3_layer, w4_count = map(int, os.environ["BENCH_SIZES"].split())
steps = [int(n) for n in os.environ["BENCH_W4_STEPS"].split()]
MIB = 1 << 20

def med(key):
    v = vals.get(key)
    if not v:
        return "n/a"
    if "FAIL" in v:
        return "FAIL"
    return statistics.median(float(x) for x in v)

def num(v, scale=1.0, digits=2):
    return v if isinstance(v, str) else f"{v / scale:.{digits}f}"

def ratio(a, b, digits=2):
    if isinstance(a, str) or isinstance(b, str) or b == 0:
        return "n/a" if "FAIL" not in (a, b) else "FAIL"
    return f"{a / b:.{digits}f}"

names = {
    "w1": f"W1: {w1_count} images x {w1_layers} x {w1_layer // MIB} MiB",
    "w2": f"W2: {w2_count} multi-arch images (2 platforms, shared base)",
    "w3": f"W3: 1 image, {w3_layer // MIB} MiB layer",
    "w4": f"W4: {w4_count} images x 1 KiB",
}
rows = []
def row(*cells):
    rows.append("| " + " | ".join(str(c) for c in cells) + " |")

for w in ("w1", "w2", "w3", "w4"):
    d = names[w]
    for kind, label in (("cold", "cold sync (s)"), ("warm", "warm re-sync (s)")):
        a, b = med(f"{w}.isync.{kind}"), med(f"{w}.skopeo.{kind}")
        row(d, label, num(a), num(b), ratio(a, b))
    if w == "w1":
        f, a, b = med("w1.floor"), med("w1.isync.cold"), med("w1.skopeo.cold")
        row(d, f"cold sync / raw-copy floor (floor.py: {num(f)} s)", ratio(a, f) + "x", ratio(b, f) + "x", ratio(a, b))
    if w == "w3":
        for kind in ("cold", "warm"):
            a, b = med(f"w3.isync.{kind}.rss"), med(f"w3.skopeo.{kind}.rss")
            row(d, f"peak RSS, {kind} (MiB)", num(a, 1024, 0), num(b, 1024, 0), ratio(a, b))
        a, b = med("w3.isync.cold"), med("w3.skopeo.cold")
        size = w3_layer / MIB
        row(d, "cold throughput (MiB/s)", ratio(size, a, 0), ratio(size, b, 0), ratio(b, a))
    if w == "w4":
        for n in steps:
            a = med(f"w4.isync.warm.n{n}")
            row(f"W4: first {n} images", "warm re-sync (s); s/image", f"{num(a)}; {ratio(a, float(n), 4)}", "-", "-")
for w in ("w1", "w2", "w4"):
    a, b = med(f"{w}.isync.cold.rss"), med(f"{w}.skopeo.cold.rss")
    row(names[w], "peak RSS, cold (MiB)", num(a, 1024, 0), num(b, 1024, 0), ratio(a, b))

print("| workload | metric | image-syncer | skopeo | ratio image-syncer/skopeo |")
print("|---|---|--:|--:|--:|")
print("\n".join(rows))
EOF
else
BENCH_SIZES="$W1_COUNT $W1_LAYERS $W1_LAYER" BENCH_LAT_W4="$LAT_W4" BENCH_RTT="$((2 * LATENCY))" BENCH_SKOPEO_MAX="$SKOPEO_MAX" \
  python3 - "$WORK/values.txt" >"$WORK/table.md" <<'EOF'
import os, statistics, sys

vals = {}
for line in open(sys.argv[1]):
    key, *v = line.split()
    vals[key] = v
w1_count, w1_layers, w1_layer = map(int, os.environ["BENCH_SIZES"].split())
rtt = os.environ["BENCH_RTT"]
limit = os.environ["BENCH_SKOPEO_MAX"]

def med(key):
    v = vals.get(key)
    if not v:
        return "n/a"
    if "FAIL" in v:
        return "FAIL"
    v = [x for x in v if x != "TIMEOUT"]
    if not v:
        return f"> {limit} (stopped)"
    return statistics.median(float(x) for x in v)

def num(v, scale=1.0, digits=2):
    return v if isinstance(v, str) else f"{v / scale:.{digits}f}"

def ratio(a, b, digits=2):
    if isinstance(a, str) or isinstance(b, str) or b == 0:
        return "n/a" if "FAIL" not in (a, b) else "FAIL"
    return f"{a / b:.{digits}f}"

rows = []
def row(*cells):
    rows.append("| " + " | ".join(str(c) for c in cells) + " |")

ws = []
if "w1.isync.cold" in vals:
    ws.append(("w1", f"W1: {w1_count} images x {w1_layers} x {w1_layer >> 20} MiB", w1_count))
for n in os.environ["BENCH_LAT_W4"].split():
    ws.append((f"w4n{n}", f"W4: {n} images x 1 KiB", int(n)))
for w, d, n in ws:
    for kind, label in (("cold", "cold sync (s)"), ("warm", "warm re-sync (s)")):
        a, b = med(f"{w}.isync.{kind}"), med(f"{w}.skopeo.{kind}")
        row(d, label, num(a), num(b), ratio(a, b))
    if w == "w1":
        f, a, b = med("w1.floor"), med("w1.isync.cold"), med("w1.skopeo.cold")
        row(d, f"cold sync / raw-copy floor (floor.py: {num(f)} s)", ratio(a, f) + "x", ratio(b, f) + "x", ratio(a, b))
    else:
        for kind in ("cold", "warm"):
            a, b = med(f"{w}.isync.{kind}"), med(f"{w}.skopeo.{kind}")
            row(d, f"{kind}: ms per image", ratio(a, n / 1000, 1), ratio(b, n / 1000, 1), "-")
for w, d, n in ws:
    a, b = med(f"{w}.isync.cold.rss"), med(f"{w}.skopeo.cold.rss")
    row(d, "peak RSS, cold (MiB)", num(a, 1024, 0), num(b, 1024, 0), ratio(a, b))

print(f"| workload (RTT {rtt} ms, TLS) | metric | image-syncer | skopeo | ratio image-syncer/skopeo |")
print("|---|---|--:|--:|--:|")
print("\n".join(rows))
EOF
fi

ELAPSED="$(secs_since "$BENCH_T0")"
{
  echo
  echo "## image-syncer benchmark, $MODE mode ($RUNS run(s) per figure, medians)"
  echo
  if [ -n "$LATENCY" ]; then
    echo "Both registries over TLS (a local CA) behind the testkit's latency-proxy, $LATENCY ms each way"
    echo "(RTT $((2 * LATENCY)) ms; opening a connection costs one more round trip). Populated directly."
    echo
  fi
  if [ "$FLAKY_ONLY" = 0 ]; then cat "$WORK/table.md"; echo; fi
  if [ -n "$LATENCY" ]; then
    for note in "${SKOPEO_NOTES[@]}" "${LIMIT_NOTES[@]}"; do echo "- $note"; done
    if [ $((${#SKOPEO_NOTES[@]} + ${#LIMIT_NOTES[@]})) -gt 0 ]; then echo; fi
  else
  echo "W1 cold through fault proxies in front of both registries (half 500s, a quarter 429s with"
  echo "Retry-After: 1, a quarter dropped connections): per run, seconds : images exact : exit code."
  echo "image-syncer with its defaults; skopeo sync --retry-times 5."
  echo
  echo "| requests failing | image-syncer | skopeo |"
  echo "|---|---|---|"
  for pct in $FLAKY_RATES; do
    echo "| $pct % | ${FLAKY[$pct.isync]% } | ${FLAKY[$pct.skopeo]% } |"
  done
  echo
  fi
  echo "Machine and versions:"
  echo
  echo "- nproc: $(nproc)"
  echo "- memory: $(free -h | awk '/^Mem:/ {print $2 " total, " $7 " available"}')"
  echo "- CPU: $( (lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1) || true)"
  echo "- kernel: $(uname -r)"
  echo "- image-syncer: $("$BIN" --version 2>&1) (commit $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)), flags: ${ISYNC_TLS[0]}${JOBS_ARGS[*]:+ ${JOBS_ARGS[*]}} (default concurrency unless --jobs is listed)"
  echo "- skopeo: $(skopeo --version 2>&1); its blob-info cache: $SKOPEO_CACHE_NOTE"
  echo "- registry: $("$REGISTRY_BIN" --version 2>&1)"
  echo "- python3: $(python3 --version 2>&1)"
  echo "- whole run: ${ELAPSED} s"
  if [ "$FAILED" != 0 ]; then echo "- SOME RUNS FAILED: see FAIL above"; fi
  echo
  echo "Raw runs (seconds; .rss in KiB):"
  echo
  echo '```text'
  cat "$WORK/values.txt"
  echo '```'
} >"$WORK/report.md"

mkdir -p "$TARGET_DIR/bench"
cp "$WORK/report.md" "$TARGET_DIR/bench/results-$MODE.md"
cat "$WORK/report.md"
log "report also written to $TARGET_DIR/bench/results-$MODE.md"
exit "$FAILED"
