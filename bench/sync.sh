#!/usr/bin/env bash
# Sync benchmark: `vmedia library sync` against its peers on the same data, in one run, over
# loopback and again through a relay that delays every byte (issue 12, "Speed").
#
# usage: bench/sync.sh TARGET_BINARY          (e.g. target/release/vmedia)
# env:   BENCH_DIR       scratch folder (default: a new temp dir, removed at exit)
#        BENCH_DATA_MIB  MiB of real file content in the image (default 1600)
#        BENCH_HOLE_MIB  MiB of zeros (a sparse file in the tree) in the image (default 448)
#        BENCH_RELAY_MIB MiB of the raw image of case 3 (default 128: its one-chunk-at-a-time
#                        run costs one round trip per chunk, ~0.1 s each at 50 ms)
#        BENCH_RELAY_MS  one-way delay of the relay in milliseconds (default 50)
#        BENCH_NO_S3=1   skip every relay case (they need SeaweedFS from scripts/setup.sh)
#
# Cases and targets (issue 12); cases 1 and 2 run twice, over loopback and through the relay,
# on the whole ~2 GiB image (no downsizing: about 5 minutes of the run on this machine):
# 1. First sync of the image against `restic copy` between two restic repositories (the second
#    made with --copy-chunker-params, so restic too copies chunks without re-chunking):
#    vmedia >= 1.5x faster. Loopback: folder library to folder library, restic repository to
#    restic repository. Relay: folder library to an S3 library on SeaweedFS reached through the
#    relay, against `restic copy` into a restic repository on the same SeaweedFS (restic's s3
#    backend) through the same relay.
# 2. Sync of the repacked second version (one 1 MiB file added) against `rsync` delta transfer
#    of v1 -> v2 to an rsync daemon (rsync://, no ssh): vmedia >= 3x faster, and no more bytes
#    on the wire (vmedia: stored bytes sent, from its report; rsync: its --stats totals).
#    Relay: vmedia into the S3 library of case 1 through the relay; rsync to a daemon reached
#    through a second relay instance in front of its port.
# 3. Through the relay to SeaweedFS: the default `--parallel` against `--parallel 1` (one chunk
#    at a time) of the same chunks: throughput >= 5x.
# The relay (a python asyncio proxy this script runs; the machine has no netem) also counts the
# HTTP requests and connections it carries: each relay vmedia run prints its requests per chunk
# sent (a chunk put should cost one request, so one round trip).
# Inputs are read once before timing (warm page cache); `sync` before each timed run.
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_binary "$0" "$@"
DATA_MIB=${BENCH_DATA_MIB:-1600}
HOLE_MIB=${BENCH_HOLE_MIB:-448}
RELAY_MIB=${BENCH_RELAY_MIB:-128}
RELAY_MS=${BENCH_RELAY_MS:-50}
NO_S3=${BENCH_NO_S3:-0}
bench_require restic rsync python3 curl
bench_workdir sync
export RESTIC_PASSWORD=vmedia-bench RESTIC_FROM_PASSWORD=vmedia-bench
unset VMEDIA_LIBRARY VMEDIA_LIBRARY_KEY
PY=$(command -v python3)
trap 'bench_stop_servers; [ -n "${BENCH_DIR:-}" ] || rm -rf "$WORK"' EXIT

# --- input: an ISO of the machine's own package files plus holes, and its repack ----------
bench_iso_versions BENCH_SYNC

time_cmd() { # time_cmd CMD...: sync (not timed), run CMD once, print its wall time in seconds
  local t0 t1
  sync
  t0=$(date +%s.%N)
  if ! "$@" > "$WORK/last.log" 2>&1; then
    echo "bench: command failed: $*" >&2
    tail -20 "$WORK/last.log" >&2
    exit 1
  fi
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}
ratio() { awk -v peer="$1" -v ours="$2" 'BEGIN { if (ours <= 0) ours = 0.001; printf "%.2f", peer / ours }'; }
json_field() { "$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
RESULTS=()
report() { # report LABEL VMEDIA_VALUE PEER_NAME PEER_VALUE TARGET UNIT
  local r verdict
  r=$(ratio "$4" "$2")
  verdict=$(awk -v r="$r" -v t="$5" 'BEGIN { print (t == "-") ? "info" : ((r >= t) ? "ok" : "MISSED") }')
  printf '%-40s vmedia %14s%s  %-24s %14s%s  ratio %6sx (target >= %s: %s)\n' \
    "$1" "$2" "$6" "$3" "$4" "$6" "$r" "$5" "$verdict"
  RESULTS+=("$1|$3|$r|$5|$verdict")
}

A="$WORK/lib-a"; B="$WORK/lib-b"; R1="$WORK/restic-1"; R2="$WORK/restic-2"
rm -rf "$A" "$B" "$R1" "$R2"
vm() { "$VMEDIA" "$@"; }
vm_sync() { vm library sync --from "$A" --to "$B" --json > "$WORK/$1.json"; }

# --- servers: SeaweedFS (S3), the relays, the rsync daemon ------------------------------------
# The relay: every byte is held RELAY_MS before it is passed on, in each direction, so a
# request/response costs 2 x RELAY_MS more, as on a WAN link; bandwidth is not limited. It
# counts connections and HTTP request lines (client to server) and writes the counts to its
# stats file on SIGUSR1.
cat > "$WORK/relay.py" <<'PY'
import asyncio, json, re, signal, sys, time
listen, target, delay, stats_file = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) / 1000.0, sys.argv[4]
REQUEST = re.compile(rb'(?:GET|PUT|HEAD|POST|DELETE) \S+ HTTP/1\.[01]\r\n')
stats = {"connections": 0, "requests": 0}

async def pump(reader, writer, count):
    queue = asyncio.Queue()
    async def forward():
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                break
            writer.write(data)
            await writer.drain()
        writer.close()
    task = asyncio.create_task(forward())
    tail = b""
    try:
        while True:
            data = await reader.read(65536)
            if count and data:
                # A request line split across two reads is found in the joined window;
                # one that ended inside the previous tail was counted already.
                window = tail + data
                stats["requests"] += sum(1 for m in REQUEST.finditer(window) if m.end() > len(tail))
                tail = window[-200:]
            queue.put_nowait((time.monotonic() + delay, data or None))
            if not data:
                break
    except ConnectionError:
        queue.put_nowait((time.monotonic(), None))
    await task

async def handle(client_reader, client_writer):
    stats["connections"] += 1
    try:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(pump(client_reader, server_writer, True),
                         pump(server_reader, client_writer, False), return_exceptions=True)

def dump():
    with open(stats_file + ".tmp", "w") as f:
        json.dump(stats, f)
    import os
    os.replace(stats_file + ".tmp", stats_file)

async def main():
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump)
    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()

asyncio.run(main())
PY
start_relay() { # start_relay NAME TARGET_PORT: sets RELAY_PORT_NAME and RELAY_PID_NAME
  local port
  port=$(free_port)
  start_bg "$port" "$PY" "$WORK/relay.py" "$port" "$2" "$RELAY_MS" "$WORK/relay-$1.stats"
  printf -v "RELAY_PORT_$1" %s "$port"
  printf -v "RELAY_PID_$1" %s "$LAST"
}
relay_stats() { # relay_stats NAME: prints "CONNECTIONS REQUESTS" carried so far
  local pid_var="RELAY_PID_$1" i
  rm -f "$WORK/relay-$1.stats"
  kill -USR1 "${!pid_var}"
  for i in $(seq 50); do [ -f "$WORK/relay-$1.stats" ] && break; sleep 0.05; done
  "$PY" -c 'import json,sys; s = json.load(open(sys.argv[1])); print(s["connections"], s["requests"])' "$WORK/relay-$1.stats"
}
per_chunk() { # per_chunk BEFORE_STATS AFTER_STATS REPORT_JSON: requests per chunk sent, connections
  local chunks
  chunks=$(json_field "$3" chunks_sent)
  awk -v b="$1" -v a="$2" -v c="$chunks" 'BEGIN { split(b, x, " "); split(a, y, " ");
    r = y[2] - x[2]; printf "%d requests on %d connections for %d chunks sent: %.2f requests per chunk", r, y[1] - x[1], c, (c > 0) ? r / c : 0 }'
}

if [ "$NO_S3" != 1 ]; then
  bench_start_seaweedfs
  start_relay s3 "$S3"
  S3_URL="http://127.0.0.1:$RELAY_PORT_s3"
fi
mkdir -p "$WORK/rsync-dst" "$WORK/rsync-dst-relay"
RSYNC_PORT=$(free_port)
cat > "$WORK/rsyncd.conf" <<CONF
pid file = $WORK/rsyncd.pid
use chroot = no
uid = $(id -un)
gid = $(id -gn)
[data]
  path = $WORK/rsync-dst
  read only = no
[relay]
  path = $WORK/rsync-dst-relay
  read only = no
CONF
start_bg "$RSYNC_PORT" rsync --daemon --no-detach --address=127.0.0.1 --port="$RSYNC_PORT" --config="$WORK/rsyncd.conf"
[ "$NO_S3" = 1 ] || start_relay rsync "$RSYNC_PORT"

# --- 1. first sync vs restic copy ------------------------------------------------------------
echo "== first sync of v1 ($SIZE1 bytes) vs restic copy"
use_version v1
vm --library "$A" library init >/dev/null
vm --library "$A" library add image "$IMAGE" >/dev/null
restic -r "$R1" init --repository-version 2 >/dev/null
(cd "$IMAGE_DIR" && restic -r "$R1" backup --compression auto image.iso >/dev/null)
restic -r "$R2" init --repository-version 2 --from-repo "$R1" --copy-chunker-params >/dev/null
T_VM1=$(time_cmd vm_sync sync1)
T_RESTIC=$(time_cmd restic -r "$R2" copy --from-repo "$R1")
report "first sync: time (loopback)" "$T_VM1" "restic copy" "$T_RESTIC" 1.5 s
echo "   vmedia sent $(json_field "$WORK/sync1.json" bytes_sent) bytes in $(json_field "$WORK/sync1.json" chunks_sent) chunks"
if [ "$NO_S3" != 1 ]; then
  S3LIB="s3://bench/lib"
  R3="s3:$S3_URL/bench/restic"
  vm_s3_sync() { vm --s3-endpoint "$S3_URL" library sync --from "$A" --to "$S3LIB" --json > "$WORK/$1.json"; }
  restic -r "$R3" init --repository-version 2 --from-repo "$R1" --copy-chunker-params >/dev/null
  BEFORE=$(relay_stats s3)
  T_VM1R=$(time_cmd vm_s3_sync sync1-relay)
  AFTER=$(relay_stats s3)
  T_RESTICR=$(time_cmd restic -r "$R3" copy --from-repo "$R1")
  report "first sync: time (relay ${RELAY_MS} ms, S3)" "$T_VM1R" "restic copy (s3)" "$T_RESTICR" 1.5 s
  echo "   vmedia: $(per_chunk "$BEFORE" "$AFTER" "$WORK/sync1-relay.json")"
fi

# --- 2. repacked version vs rsync daemon ------------------------------------------------------
echo "== sync of the repacked v2 vs rsync delta transfer to an rsync daemon"
use_version v2
vm --library "$A" library add image "$IMAGE" >/dev/null
cp --reflink=auto "$WORK/input/v1.iso" "$WORK/rsync-dst/image.iso"
cp --reflink=auto "$WORK/input/v1.iso" "$WORK/rsync-dst-relay/image.iso"
T_VM2=$(time_cmd vm_sync sync2)
rsync_run() { rsync --stats --no-whole-file "$IMAGE" "rsync://127.0.0.1:$1/$2/image.iso" > "$WORK/rsync-$2.stats"; }
rsync_wire() { awk '/^Total bytes sent:/ { gsub(",", "", $4); s = $4 } /^Total bytes received:/ { gsub(",", "", $4); r = $4 } END { print s + r }' "$WORK/rsync-$1.stats"; }
T_RSYNC=$(time_cmd rsync_run "$RSYNC_PORT" data)
cmp -s "$IMAGE" "$WORK/rsync-dst/image.iso" || { echo "bench: rsync did not produce v2" >&2; exit 1; }
RSYNC_WIRE=$(rsync_wire data)
VM_WIRE=$(json_field "$WORK/sync2.json" bytes_sent)
report "repacked v2: time (loopback)" "$T_VM2" "rsync (daemon, delta)" "$T_RSYNC" 3 s
report "repacked v2: bytes on the wire (loopback)" "$VM_WIRE" "rsync (daemon, delta)" "$RSYNC_WIRE" 1 B
echo "   (vmedia: chunk bytes sent, its own request overhead excluded; rsync: --stats totals)"
echo "   first sync sent $(json_field "$WORK/sync1.json" bytes_sent) bytes; the second $(ratio "$VM_WIRE" "$(json_field "$WORK/sync1.json" bytes_sent)")x of it"
if [ "$NO_S3" != 1 ]; then
  BEFORE=$(relay_stats s3)
  T_VM2R=$(time_cmd vm_s3_sync sync2-relay)
  AFTER=$(relay_stats s3)
  T_RSYNCR=$(time_cmd rsync_run "$RELAY_PORT_rsync" relay)
  cmp -s "$IMAGE" "$WORK/rsync-dst-relay/image.iso" || { echo "bench: rsync through the relay did not produce v2" >&2; exit 1; }
  report "repacked v2: time (relay ${RELAY_MS} ms, S3)" "$T_VM2R" "rsync (daemon, delta)" "$T_RSYNCR" 3 s
  report "repacked v2: bytes on the wire (relay)" "$(json_field "$WORK/sync2-relay.json" bytes_sent)" \
    "rsync (daemon, delta)" "$(rsync_wire relay)" 1 B
  echo "   vmedia: $(per_chunk "$BEFORE" "$AFTER" "$WORK/sync2-relay.json") (the rest: listings, manifest, timeline, markers, peer records)"
fi

# --- 3. through the relay: pipelined vs one chunk at a time -----------------------------------
if [ "$NO_S3" = 1 ]; then
  echo "== relay: skipped (BENCH_NO_S3=1)"
else
  echo "== ${RELAY_MIB} MiB through the relay of ${RELAY_MS} ms each way to SeaweedFS: default --parallel vs --parallel 1"
  # The package files themselves, concatenated: real content, a raw image (no ISO header).
  { xargs cat < "$WORK/files.txt" 2>/dev/null || true; } | head -c $((RELAY_MIB * 1024 * 1024)) > "$WORK/relay.img"
  vm --library "$A" library add relay "$WORK/relay.img" >/dev/null
  relay_sync() { vm --s3-endpoint "$S3_URL" library sync --from "$A" --to "s3://bench/$1" --items relay "${@:2}" --json > "$WORK/relay-$1.json"; }
  BEFORE=$(relay_stats s3)
  T_PD=$(time_cmd relay_sync pd)
  AFTER=$(relay_stats s3)
  echo "   default --parallel: $(per_chunk "$BEFORE" "$AFTER" "$WORK/relay-pd.json")"
  T_P1=$(time_cmd relay_sync p1 --parallel 1)
  BEFORE=$(relay_stats s3)
  echo "   --parallel 1: $(per_chunk "$AFTER" "$BEFORE" "$WORK/relay-p1.json")"
  BD=$(json_field "$WORK/relay-pd.json" bytes_sent); B1=$(json_field "$WORK/relay-p1.json" bytes_sent)
  [ "$BD" = "$B1" ] && [ "$BD" -gt 0 ] || { echo "bench: the two runs sent different or no bytes ($BD, $B1)" >&2; exit 1; }
  TPD=$(awk -v b="$BD" -v t="$T_PD" 'BEGIN { printf "%.2f", b / t / 1048576 }')
  TP1=$(awk -v b="$B1" -v t="$T_P1" 'BEGIN { printf "%.2f", b / t / 1048576 }')
  # Throughput: higher is better, so the ratio is pipelined over one-at-a-time.
  R=$(ratio "$TPD" "$TP1")
  V=$(awk -v r="$R" 'BEGIN { print (r >= 5) ? "ok" : "MISSED" }')
  printf '%-40s default %8s MiB/s  --parallel 1 %8s MiB/s  ratio %6sx (target >= 5: %s)\n' \
    "relay ${RELAY_MS} ms: throughput" "$TPD" "$TP1" "$R" "$V"
  RESULTS+=("relay ${RELAY_MS} ms: throughput|one chunk at a time|$R|5|$V")
fi

echo
echo "== summary (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
for line in "${RESULTS[@]}"; do
  IFS='|' read -r label peer r target verdict <<<"$line"
  printf '%-40s vs %-24s %6sx (target >= %s) %s\n' "$label" "$peer" "$r" "$target" "$verdict"
done
