#!/usr/bin/env bash
# Reproduces the README's Performance table on this machine, loopback only.
#
#   bench/run.sh              everything (parser, end to end, scale, latency): ~15 minutes
#   bench/run.sh parser e2e   only some parts (parser | e2e | scale | sinks | latency)
#   RELAY=/tmp/old/sse-relay bench/run.sh scale
#                             the same harness around another build (a baseline)
#
# Parts:
#   parser  criterion (benches/parser.rs): sse-relay's parser against LaunchDarkly's
#           client, eventsource-stream and sse-stream, 16 KiB and 256 KiB chunks.
#   e2e     tools/loadgen serves each corpus over HTTP/1.1 on 127.0.0.1; sse-relay
#           relays it into a JSON-lines file sink (every line counted), and curl -N
#           and LaunchDarkly's client read the same bytes. RUNS (default 3) each.
#           sse-relay is timed from its response to its last record in the file
#           (curl and the peer client time their own request the same way); the
#           whole process, start-up to exit, is reported beside it.
#   scale   STREAMS (default 10000) idle streams with a HEARTBEAT (default 15) s
#           comment, over http and then https (SCALE_SCHEMES): sse-relay's RSS
#           and idle CPU over IDLE_WINDOW (30) s, starting SETTLE (30) s after
#           the last connect; then the server restarts and every stream must
#           reconnect (spread of reconnect times) and resume with the
#           Last-Event-ID it had. Then, for http, the floor: tools/loadgen's
#           idle-floor, STREAMS bare readers on the same runtime, measured
#           the same way (FLOOR_SETTLE (15) s after its last connect).
#   sinks   the small corpus through a webhook sink (to tools/loadgen's receiver)
#           and a NATS sink (to nats-server -js, memory storage), each against a
#           raw client sending the same records in the same run (reqwest posting
#           the same NDJSON batches; async-nats publishing with 256 acks in
#           flight). Timed by the receiver and by JetStream's own timestamps.
#   latency loadgen's /paced: RATE (default 1000) events/s for LATENCY_SECS
#           (default 10) s, each stamped with its send time; loadgen follows
#           the relay's output file (polling every 50 us) and reports p50/p99
#           from the server's write to the record being in the file.
# Every loop is bounded in time; every process started here is stopped here.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=${RUNS:-3}
STREAMS=${STREAMS:-10000}
HEARTBEAT=${HEARTBEAT:-15}
IDLE_WINDOW=${IDLE_WINDOW:-30}
SETTLE=${SETTLE:-30}
FLOOR_SETTLE=${FLOOR_SETTLE:-15}
SCALE_SCHEMES=${SCALE_SCHEMES:-http https}
RATE=${RATE:-1000}
LATENCY_SECS=${LATENCY_SECS:-10}
PARTS=${*:-parser e2e scale sinks latency}
WORK=$(mktemp -d /tmp/sse-bench.XXXXXX)
RESULTS=$WORK/results.tsv
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # Outputs run to hundreds of MB; KEEP_WORK=1 keeps them for a look.
  if [ -z "${KEEP_WORK:-}" ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT
echo "work dir: $WORK (removed at exit unless KEEP_WORK=1)"

# Enough descriptors for STREAMS sockets (the relay's and the server's are
# separate processes, each needs STREAMS plus a few).
want=$((STREAMS + 1024))
if [ "$(ulimit -n)" -lt "$want" ]; then
  ulimit -n "$want" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
fi
echo "open-file limit: $(ulimit -n)"

cargo build --release -q -p sse-relay -p sse-loadgen
# RELAY=path runs another sse-relay build (a baseline) instead of this tree's.
RELAY=${RELAY:-$ROOT/target/release/sse-relay}
LOADGEN=$ROOT/target/release/loadgen
LDCLIENT=$ROOT/target/release/ld-client

record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RESULTS"; }

# clock VAR COMMAND...: runs COMMAND and sets VAR to its wall-clock seconds,
# to the microsecond (/usr/bin/time's %e counts in 10 ms steps, too coarse
# for whole processes of 0.1-0.3 s). Every whole process is timed this way,
# around the same /usr/bin/time wrapper, so each pays the same overhead.
clock() {
  local var=$1 start=$EPOCHREALTIME
  shift
  "$@"
  printf -v "$var" '%s' "$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.6f", b - a }')"
}

# The CPU process PID uses over the next IDLE_WINDOW seconds, in % of one core
# (user and system time from /proc/PID/stat).
idle_cpu_pct() {
  local hz t0 t1
  hz=$(getconf CLK_TCK)
  t0=$(awk '{print $14 + $15}' "/proc/$1/stat")
  sleep "$IDLE_WINDOW"
  t1=$(awk '{print $14 + $15}' "/proc/$1/stat")
  python3 -c "print(100 * ($t1 - $t0) / $hz / $IDLE_WINDOW)"
}

# Starts loadgen with the given arguments; sets LG_PID and LG_ADDR.
start_loadgen() {
  local out=$WORK/loadgen.$RANDOM.out
  "$LOADGEN" "$@" >"$out" 2>&1 &
  LG_PID=$!
  PIDS+=("$LG_PID")
  for _ in $(seq 600); do
    if grep -q '^listening' "$out" 2>/dev/null; then break; fi
    sleep 0.1
  done
  LG_ADDR=$(awk '/^listening/ {print $2}' "$out")
  [ -n "$LG_ADDR" ] || { echo "loadgen did not start"; cat "$out"; exit 1; }
}

events_of() { case $1 in small) echo 1000000 ;; large) echo 20000 ;; multiline) echo 200000 ;; esac; }

if [[ $PARTS == *parser* ]]; then
  echo "== parser (criterion, in memory)"
  rm -rf target/criterion
  cargo bench -q --bench parser >"$WORK/criterion.log" 2>&1 || { tail -30 "$WORK/criterion.log"; exit 1; }
fi

if [[ $PARTS == *e2e* ]]; then
  echo "== end to end over loopback"
  for corpus in small large; do
    n=$(events_of $corpus)
    for run in $(seq "$RUNS"); do
      # sse-relay: a 204 after the corpus ends the stream, and the daemon exits.
      start_loadgen --corpora "$corpus" --once --exit-after 300
      dir=$WORK/e2e-$corpus-$run
      mkdir -p "$dir"
      cat >"$dir/relay.toml" <<EOF
data_dir = "$dir/state"
[streams.bench]
url = "http://$LG_ADDR/corpus/$corpus"
backoff_initial = "10ms"
max_line_bytes = 1048576
[sinks.file]
type = "file"
inputs = ["*"]
path = "$dir/out.jsonl"
encoding = "json"
fsync = "never"
EOF
      # Every timed run starts without a backlog of dirty pages from the last
      # one (the kernel would throttle this run's writes for it).
      sync
      clock secs /usr/bin/time -f '%M' -o "$dir/time" \
        timeout 300 "$RELAY" run --config "$dir/relay.toml" >"$dir/relay.log" 2>&1
      read -r rss_kib <"$dir/time"
      lines=$(wc -l <"$dir/out.jsonl")
      if [ "$lines" -ne "$n" ]; then echo "sse-relay $corpus: $lines records, expected $n"; exit 1; fi
      bytes=$(stat -c %s "$dir/out.jsonl")
      # Like curl's and the peer client's own clocks: from the response (the
      # relay's "connected to" log line) to the last record in the file (its
      # mtime), without process start-up, the reconnect for the final 204 and
      # shutdown, which the whole-process time includes.
      active=$(python3 - "$dir/relay.log" "$dir/out.jsonl" <<'PY'
import datetime, os, re, sys
log = re.sub(r"\x1b\[[0-9;]*m", "", open(sys.argv[1], errors="replace").read())
at = re.search(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z\s+INFO\s+stream=\S+ connected to", log)
start = datetime.datetime.fromisoformat(at.group(1)).replace(tzinfo=datetime.timezone.utc)
print(f"{os.stat(sys.argv[2]).st_mtime_ns / 1e9 - start.timestamp():.6f}")
PY
)
      record "e2e.$corpus.relay.active_seconds" "$run" "$active"
      rm -f "$dir/out.jsonl"
      record "e2e.$corpus.relay.seconds" "$run" "$secs"
      record "e2e.$corpus.relay.rss_kib" "$run" "$rss_kib"
      record "e2e.$corpus.relay.out_bytes" "$run" "$bytes"
      kill "$LG_PID" 2>/dev/null || true
      wait "$LG_PID" 2>/dev/null || true

      start_loadgen --corpora "$corpus" --exit-after 300
      curl -sN -o /dev/null -w '%{size_download} %{time_total}\n' "http://$LG_ADDR/corpus/$corpus" >"$dir/curl"
      read -r cbytes csecs <"$dir/curl"
      record "e2e.$corpus.curl.seconds" "$run" "$csecs"
      # curl again, writing the body to a file as the relay writes its records.
      sync
      clock curl_secs /usr/bin/time -f '%M' -o "$dir/curl-file.time" \
        curl -sN -o "$dir/curl.body" -w '%{time_total}\n' "http://$LG_ADDR/corpus/$corpus" >"$dir/curl-file"
      rm -f "$dir/curl.body"
      record "e2e.$corpus.curl_file.seconds" "$run" "$(cat "$dir/curl-file")"
      record "e2e.$corpus.curl_file.process_seconds" "$run" "$curl_secs"
      record "e2e.$corpus.body_bytes" "$run" "$cbytes"
      clock ld_secs /usr/bin/time -f '%M' -o "$dir/ld.time" \
        timeout 300 "$LDCLIENT" --events "$n" "http://$LG_ADDR/corpus/$corpus" >"$dir/ld"
      record "e2e.$corpus.ld.seconds" "$run" "$(sed -n 's/.*seconds=\([0-9.]*\).*/\1/p' "$dir/ld")"
      record "e2e.$corpus.ld.process_seconds" "$run" "$ld_secs"
      kill "$LG_PID" 2>/dev/null || true
      wait "$LG_PID" 2>/dev/null || true
    done
  done
fi

# Idle streams, plain http and https (TLS 1.3, an ECDSA P-256 certificate
# trusted through ca_file): RSS and idle CPU from SETTLE s after the last
# connect, then a server restart.
scale_run() {
  local scheme=$1
  echo "== scale ($scheme): $STREAMS idle streams, heartbeat ${HEARTBEAT}s"
  dir=$WORK/scale-$scheme
  mkdir -p "$dir"
  local tls=() ca=""
  if [ "$scheme" = https ]; then
    tls=(--tls-dir "$dir")
    ca="ca_file = \"$dir/cert.pem\"\n"
  fi
  start_loadgen --corpora "" --heartbeat "$HEARTBEAT" --generation 1 --log "$dir/gen1.log" --exit-after 900 "${tls[@]}"
  port=${LG_ADDR##*:}
  {
    echo "data_dir = \"$dir/state\""
    echo "checkpoint_interval = \"5s\""
    for i in $(seq "$STREAMS"); do
      printf '[streams.s%d]\nurl = "%s://%s/idle/s%d"\nidle_timeout = "%ds"\nbackoff_initial = "5s"\nbackoff_max = "30s"\n'"$ca" \
        "$i" "$scheme" "$LG_ADDR" "$i" $((HEARTBEAT * 3))
    done
    printf '[sinks.file]\ntype = "file"\ninputs = ["*"]\npath = "%s/out.jsonl"\nfsync = "never"\n' "$dir"
  } >"$dir/relay.toml"
  timeout 900 "$RELAY" run --config "$dir/relay.toml" >"$dir/relay.log" 2>&1 &
  RELAY_PID=$!
  PIDS+=("$RELAY_PID")
  # RSS and CPU are the relay's own, not those of `timeout` in front of it.
  for _ in $(seq 50); do
    REAL_PID=$(pgrep -P "$RELAY_PID" | head -1) && [ -n "$REAL_PID" ] && break
    sleep 0.1
  done
  # Wait (bounded) until every stream is connected and has its first event.
  for _ in $(seq 240); do
    [ "$(wc -l 2>/dev/null <"$dir/out.jsonl" || echo 0)" -ge "$STREAMS" ] && break
    sleep 0.5
  done
  connected=$(wc -l <"$dir/out.jsonl")
  sleep "$SETTLE" # let start-up allocations and the connect wave settle
  rss_kib=$(awk '/^VmRSS/ {print $2}' "/proc/$REAL_PID/status")
  idle_cpu=$(idle_cpu_pct "$REAL_PID")
  record "scale.$scheme.connected" 1 "$connected"
  record "scale.$scheme.rss_kib" 1 "$rss_kib"
  record "scale.$scheme.idle_cpu_pct" 1 "$idle_cpu"
  # The server restarts: every connection drops; a new generation on the same port.
  kill "$LG_PID"
  wait "$LG_PID" 2>/dev/null || true
  start_loadgen --addr "127.0.0.1:$port" --corpora "" --heartbeat "$HEARTBEAT" --generation 2 --log "$dir/gen2.log" --exit-after 300 "${tls[@]}"
  for _ in $(seq 240); do
    [ "$(cat "$dir/gen2.log" 2>/dev/null | grep -c /idle/)" -ge "$STREAMS" ] && break
    sleep 0.5
  done
  sleep 1.5 # the log is flushed every second
  python3 - "$dir/gen2.log" "$STREAMS" "$scheme" >>"$RESULTS" <<'EOF'
import sys
path, streams, scheme = sys.argv[1], int(sys.argv[2]), sys.argv[3]
first = {}
for line in open(path):
    ms, p, last = line.split()
    key = p.rsplit("/", 1)[-1]
    first.setdefault(key, (float(ms), last))
times = sorted(t for t, _ in first.values())
resumed = sum(1 for k, (_, last) in first.items() if last == f"{k}-1")
def pct(q):
    return times[min(len(times) - 1, int(q * len(times)))] / 1000 if times else float("nan")
for name, value in [("reconnected", len(first)), ("resumed", resumed),
                    ("reconnect_p0_s", pct(0)), ("reconnect_p50_s", pct(0.5)),
                    ("reconnect_p99_s", pct(0.99)), ("reconnect_p100_s", pct(1.0))]:
    print(f"scale.{scheme}.{name}\t1\t{value}")
EOF
  kill "$RELAY_PID" 2>/dev/null || true
  wait "$RELAY_PID" 2>/dev/null || true
  kill "$LG_PID" 2>/dev/null || true
  wait "$LG_PID" 2>/dev/null || true
  if [ "$scheme" = http ]; then idle_floor; fi
}

# The floor under the idle CPU figure, in the same run: tools/loadgen's
# idle-floor reads the same number of idle http streams on the relay's runtime
# and does nothing else, so it costs what the wake-ups alone cost here.
idle_floor() {
  echo "== scale (http): the floor, $STREAMS bare readers on the same runtime"
  start_loadgen --corpora "" --heartbeat "$HEARTBEAT" --generation 3 --exit-after 300
  "$ROOT/target/release/idle-floor" "$LG_ADDR" "$STREAMS" >"$dir/floor.out" 2>&1 &
  local floor_pid=$!
  PIDS+=("$floor_pid")
  for _ in $(seq 240); do
    grep -q '^connected' "$dir/floor.out" && break
    sleep 0.5
  done
  grep -q '^connected' "$dir/floor.out" || { echo "idle-floor did not connect"; cat "$dir/floor.out"; exit 1; }
  sleep "$FLOOR_SETTLE"
  record "scale.http.floor_cpu_pct" 1 "$(idle_cpu_pct "$floor_pid")"
  kill "$floor_pid" "$LG_PID" 2>/dev/null || true
  wait "$floor_pid" "$LG_PID" 2>/dev/null || true
}

if [[ $PARTS == *scale* ]]; then
  for scheme in $SCALE_SCHEMES; do scale_run "$scheme"; done
fi

# Sink throughput: the small corpus (1M events) through a webhook sink and a
# NATS sink, each against a raw client sending the same records (the NDJSON a
# file sink writes for the corpus) to the same receiver, in the same run.
if [[ $PARTS == *sinks* ]]; then
  echo "== sinks: webhook and NATS, against raw clients"
  dir=$WORK/sinks
  mkdir -p "$dir"
  n=$(events_of small)
  RECEIVER=$ROOT/target/release/receiver
  BASELINE=$ROOT/target/release/sink-baseline
  # The records, once, from a file sink (the same JSON the other sinks send).
  start_loadgen --corpora small --once --exit-after 300
  printf 'data_dir = "%s/state0"\n[streams.bench]\nurl = "http://%s/corpus/small"\nbackoff_initial = "10ms"\n[sinks.file]\ntype = "file"\ninputs = ["*"]\npath = "%s/records.ndjson"\nencoding = "json"\nfsync = "never"\n' \
    "$dir" "$LG_ADDR" "$dir" >"$dir/records.toml"
  timeout 300 "$RELAY" run --config "$dir/records.toml" >"$dir/records.log" 2>&1
  kill "$LG_PID" 2>/dev/null || true
  wait "$LG_PID" 2>/dev/null || true
  start_receiver() {
    "$RECEIVER" --expect "$n" --exit-after 300 >"$dir/receiver.$1.out" 2>&1 &
    RC_PID=$!
    PIDS+=("$RC_PID")
    for _ in $(seq 100); do grep -q '^listening' "$dir/receiver.$1.out" 2>/dev/null && break; sleep 0.1; done
    RC_ADDR=$(awk '/^listening/ {print $2}' "$dir/receiver.$1.out")
  }
  received_seconds() { sed -n 's/.*seconds=\([0-9.]*\).*/\1/p' "$dir/receiver.$1.out"; }
  nats_ok=""
  if command -v nats-server >/dev/null; then
    nats_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$dir/js" >"$dir/nats.log" 2>&1 &
    PIDS+=("$!")
    for _ in $(seq 100); do "$BASELINE" nats-reset "nats://127.0.0.1:$nats_port" 2>/dev/null && nats_ok=1 && break; sleep 0.1; done
  else
    echo "  nats-server not installed (apt-get install nats-server): NATS part skipped"
  fi
  for run in $(seq "$RUNS"); do
    # Webhook sink, then the raw client, to fresh receivers.
    start_loadgen --corpora small --once --exit-after 300
    start_receiver "relay-$run"
    printf 'data_dir = "%s/state-w%s"\n[streams.bench]\nurl = "http://%s/corpus/small"\nbackoff_initial = "10ms"\n[sinks.hook]\ntype = "webhook"\ninputs = ["*"]\nurl = "http://%s/in"\nencoding = "ndjson"\n' \
      "$dir" "$run" "$LG_ADDR" "$RC_ADDR" >"$dir/webhook.toml"
    timeout 300 "$RELAY" run --config "$dir/webhook.toml" >"$dir/webhook.$run.log" 2>&1 || true
    wait "$RC_PID" 2>/dev/null || true
    record "sinks.webhook.relay.seconds" "$run" "$(received_seconds "relay-$run")"
    kill "$LG_PID" 2>/dev/null || true
    wait "$LG_PID" 2>/dev/null || true
    start_receiver "raw-$run"
    timeout 300 "$BASELINE" webhook "http://$RC_ADDR/in" "$dir/records.ndjson" || true
    wait "$RC_PID" 2>/dev/null || true
    record "sinks.webhook.raw.seconds" "$run" "$(received_seconds "raw-$run")"
    if [ -n "$nats_ok" ]; then
      server="nats://127.0.0.1:$nats_port"
      "$BASELINE" nats-reset "$server"
      start_loadgen --corpora small --once --exit-after 300
      printf 'data_dir = "%s/state-n%s"\n[streams.bench]\nurl = "http://%s/corpus/small"\nbackoff_initial = "10ms"\n[sinks.js]\ntype = "nats"\ninputs = ["*"]\nurl = "%s"\nsubject = "bench.{stream}"\nstream = "BENCH"\n' \
        "$dir" "$run" "$LG_ADDR" "$server" >"$dir/nats.toml"
      timeout 300 "$RELAY" run --config "$dir/nats.toml" >"$dir/nats.$run.log" 2>&1 || true
      kill "$LG_PID" 2>/dev/null || true
      wait "$LG_PID" 2>/dev/null || true
      report=$("$BASELINE" nats-report "$server")
      echo "  nats sink: $report"
      record "sinks.nats.relay.seconds" "$run" "$(sed -n 's/.*seconds=\([0-9.]*\).*/\1/p' <<<"$report")"
      record "sinks.nats.relay.stored" "$run" "$(sed -n 's/.*messages=\([0-9]*\).*/\1/p' <<<"$report")"
      "$BASELINE" nats-reset "$server"
      "$BASELINE" nats "$server" "$dir/records.ndjson" >/dev/null
      report=$("$BASELINE" nats-report "$server")
      echo "  raw async-nats: $report"
      record "sinks.nats.raw.seconds" "$run" "$(sed -n 's/.*seconds=\([0-9.]*\).*/\1/p' <<<"$report")"
      record "sinks.nats.raw.stored" "$run" "$(sed -n 's/.*messages=\([0-9]*\).*/\1/p' <<<"$report")"
    fi
  done
fi

if [[ $PARTS == *latency* ]]; then
  echo "== latency: $RATE events/s for ${LATENCY_SECS}s"
  for run in $(seq "$RUNS"); do
    dir=$WORK/latency-$run
    mkdir -p "$dir"
    start_loadgen --corpora "" --paced-rate "$RATE" --paced-secs "$LATENCY_SECS" \
      --tail "$dir/out.jsonl" --exit-after $((LATENCY_SECS + 60))
    lg_out=$(ls -t "$WORK"/loadgen.*.out | head -1)
    printf 'data_dir = "%s/state"\n[streams.paced]\nurl = "http://%s/paced"\nbackoff_initial = "10ms"\n[sinks.file]\ntype = "file"\ninputs = ["*"]\npath = "%s/out.jsonl"\nencoding = "json"\nfsync = "never"\n' \
      "$dir" "$LG_ADDR" "$dir" >"$dir/relay.toml"
    timeout $((LATENCY_SECS + 60)) "$RELAY" run --config "$dir/relay.toml" >"$dir/relay.log" 2>&1 || true
    wait "$LG_PID" 2>/dev/null || true
    line=$(grep '^latency' "$lg_out" || echo "latency n=0")
    echo "  $line"
    for key in n p50_us p99_us max_us; do
      record "latency.$key" "$run" "$(sed -n "s/.*$key=\([0-9]*\).*/\1/p" <<<"$line")"
    done
  done
fi

echo
python3 "$ROOT/bench/table.py" "$RESULTS" "$ROOT/target/criterion" "$(nproc)" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
