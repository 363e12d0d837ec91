#!/usr/bin/env bash
# Serving benchmark (issue 11): `vmedia serve` against its peers on the same files, in one run.
#   NBD sequential:  nbdcopy of a 1 GiB raw image from vmedia, qemu-nbd and nbdkit's file
#                    plugin.  Target: >= 1.0x qemu-nbd and >= 1.0x nbdkit.
#                    nbdcopy of the same content stored as a zstd-compressed qcow2, from
#                    vmedia's disk export and from qemu-nbd serving the qcow2.  Target: >= 1.5x.
#   NBD random:      4 KiB reads at random aligned offsets, 16 in flight on one connection
#                    (python3-libnbd's aio API), IOPS.  Target: >= 1.0x qemu-nbd.
#   HTTP Range:      wrk with a Lua script asking random 4 KiB ranges of the raw image, vmedia
#                    against nginx on the same file.  Target: >= 1.0x nginx.
#   Trace preload:   a cold S3 (SeaweedFS) library; a recorded boot read pattern (one read at a
#                    time with think time between, as a booting VM reads) replayed by a first
#                    client (the daemon records its trace), then, after a daemon restart (cold
#                    cache), by a second client that the trace preload runs ahead of.
#                    Target: >= 1.37x sooner with the trace.
#
# usage: bench/serve.sh TARGET_BINARY          (e.g. target/release/vmedia)
# env:   BENCH_DIR        scratch folder (default: a new temp dir, removed at exit)
#        BENCH_RUNS       runs per nbdcopy measurement, the best counts (default 3)
#        BENCH_SECS       seconds per random-read and wrk measurement (default 10)
#        BENCH_SIZE_MIB   image size (default 1024); its first 3/4 is data, the rest a hole
#        BENCH_TRACE_MIB  size of the S3 image of the preload case (default 256)
#        BENCH_NO_S3=1    skip the preload case (needs SeaweedFS from scripts/setup.sh)
#        BENCH_CACHE      vmedia serve --cache-size of the second vmedia row (default 2G: the peers
#                         read a file that sits whole in the kernel's page cache, so vmedia gets a
#                         cache that holds the whole image too). The first row always runs with
#                         the default 256M, where most reads miss (fetch, zstd, SHA-256).
#
# The peers are always measured. When TARGET_BINARY has no `serve` command yet (a build from
# before issue 11), the script prints the peers' figures, says so and exits 3.
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_binary "$0" "$@"
RUNS=${BENCH_RUNS:-3}
SECS=${BENCH_SECS:-10}
SIZE_MIB=${BENCH_SIZE_MIB:-1024}
TRACE_MIB=${BENCH_TRACE_MIB:-256}
NO_S3=${BENCH_NO_S3:-0}
# Debian's python3-libnbd lives in the system interpreter, not in a pyenv or venv one.
PY=/usr/bin/python3
bench_require nbdcopy nbdkit qemu-nbd qemu-img nginx wrk curl
"$PY" -c 'import nbd' 2>/dev/null || { echo "bench: python3-libnbd missing; run scripts/setup.sh" >&2; exit 1; }
HAVE_SERVE=1
"$VMEDIA" serve --help >/dev/null 2>&1 || HAVE_SERVE=0

bench_workdir serve
cleanup() {
    bench_stop_servers
    [ -n "${BENCH_DIR:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
unset VMEDIA_LIBRARY VMEDIA_LIBRARY_KEY

calc() { awk "BEGIN { print $1 }"; }
stop_last() { kill "$LAST" 2>/dev/null || true; wait "$LAST" 2>/dev/null || true; }

# --- input -------------------------------------------------------------------------------
# The data part is the machine's own files (compressible as real images are, so the zstd qcow2
# matters), the rest a hole, as installation images and disks have.
RAW="$WORK/files/raw.img"
QCOW2="$WORK/files/image.qcow2"
mkdir -p "$WORK/files"
if [ ! -f "$WORK/input.done" ]; then
    echo "== input: ${SIZE_MIB} MiB raw image ($((SIZE_MIB * 3 / 4)) MiB of data), its zstd qcow2"
    find /usr/lib /usr/share -xdev -type f -size +16k -readable -print0 2>/dev/null | sort -z \
        | xargs -0 cat 2>/dev/null | head -c $((SIZE_MIB * 3 / 4 * 1024 * 1024)) > "$RAW" || true
    truncate -s "${SIZE_MIB}M" "$RAW"
    qemu-img convert -f raw -O qcow2 -c -o compression_type=zstd "$RAW" "$QCOW2"
    touch "$WORK/input.done"
fi
SIZE=$(stat -c %s "$RAW")
printf '  raw %d bytes, qcow2 %d bytes\n' "$SIZE" "$(stat -c %s "$QCOW2")"

# --- measuring tools -----------------------------------------------------------------------
cat > "$WORK/random_reads.py" <<'PY'
# 4 KiB reads at random 4 KiB-aligned offsets, DEPTH in flight on one connection, for SECS
# seconds; prints the completed reads per second. Every read is checked against the file.
import nbd, random, sys, time
uri, secs, depth, path = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
h = nbd.NBD()
h.connect_uri(uri)
blocks = h.get_size() // 4096
source = open(path, "rb")
rng = random.Random(1)
for _ in range(64):
    offset = rng.randrange(blocks) * 4096
    source.seek(offset)
    if h.pread(4096, offset) != source.read(4096):
        sys.exit(f"{uri}: wrong bytes at {offset:#x}")
done = 0
def completed(error):
    global done
    done += 1
    return 1
buffers = [nbd.Buffer(4096) for _ in range(depth)]
start = time.monotonic()
deadline = start + secs
issued = 0
while time.monotonic() < deadline:
    while h.aio_in_flight() < depth:
        h.aio_pread(buffers[issued % depth], rng.randrange(blocks) * 4096, completion=completed)
        issued += 1
    h.poll(-1)
while h.aio_in_flight() > 0:
    h.poll(-1)
print(f"{done / (time.monotonic() - start):.0f}")
PY
cat > "$WORK/replay.py" <<'PY'
# Replays a boot read pattern (lines "OFFSET LENGTH"), one read at a time with THINK_MS of
# think time after each, as a booting guest reads; prints the seconds it took.
import nbd, sys, time
uri, pattern, think = sys.argv[1], sys.argv[2], float(sys.argv[3]) / 1000
reads = [tuple(map(int, line.split())) for line in open(pattern)]
h = nbd.NBD()
h.connect_uri(uri)
start = time.monotonic()
for offset, length in reads:
    h.pread(length, offset)
    time.sleep(think)
print(f"{time.monotonic() - start:.3f}")
PY
cat > "$WORK/range.lua" <<LUA
-- Random 4 KiB ranges of the image; wrk counts requests per second.
local blocks = math.floor($SIZE / 4096)
math.randomseed(1)
request = function()
  local first = math.random(0, blocks - 1) * 4096
  return wrk.format("GET", nil, { ["Range"] = "bytes=" .. first .. "-" .. (first + 4095) })
end
response = function(status, headers, body)
  if status ~= 206 then error("status " .. status) end
end
LUA

# Best (shortest) of RUNS nbdcopy runs to /dev/null, in seconds; the first run also checks
# that the bytes equal the raw image.
copy_time() {
    local uri=$1 best="" t0 t1 t
    nbdcopy "$uri" - | cmp -s - "$RAW" || { echo "bench: $uri does not serve the image's bytes" >&2; exit 1; }
    for _ in $(seq "$RUNS"); do
        t0=$(date +%s.%N); nbdcopy "$uri" /dev/null; t1=$(date +%s.%N)
        t=$(calc "$t1 - $t0")
        if [ -z "$best" ] || [ "$(calc "$t < $best")" = 1 ]; then best=$t; fi
    done
    printf '%.3f' "$best"
}
random_iops() { "$PY" "$WORK/random_reads.py" "$1" "$SECS" 16 "$RAW"; }
wrk_rate() {
    local url=$1 got
    got=$(curl -sf -r 4096-8191 "$url" | cmp -s - <(tail -c +4097 "$RAW" | head -c 4096) && echo ok || echo bad)
    [ "$got" = ok ] || { echo "bench: $url does not answer a Range request with the image's bytes" >&2; exit 1; }
    wrk -t2 -c16 -d"${SECS}s" -s "$WORK/range.lua" "$url" | awk '/Requests\/sec/ {print $2}'
}

# --- peers ---------------------------------------------------------------------------------
echo "== peers"
P=$(free_port); start_bg "$P" qemu-nbd --read-only --persistent --shared=8 --format=raw -b 127.0.0.1 -p "$P" -x bench "$RAW"
SEQ_QEMU=$(copy_time "nbd://127.0.0.1:$P/bench")
IOPS_QEMU=$(random_iops "nbd://127.0.0.1:$P/bench")
stop_last
P=$(free_port); start_bg "$P" qemu-nbd --read-only --persistent --shared=8 --format=qcow2 -b 127.0.0.1 -p "$P" -x bench "$QCOW2"
SEQ_QEMU_QCOW2=$(copy_time "nbd://127.0.0.1:$P/bench")
stop_last
P=$(free_port); start_bg "$P" nbdkit --foreground --readonly -i 127.0.0.1 -p "$P" file "$RAW"
SEQ_NBDKIT=$(copy_time "nbd://127.0.0.1:$P/")
stop_last
P=$(free_port)
mkdir -p "$WORK/nginx-tmp"
# As root, nginx's workers would drop to nobody and could not read the private scratch folder.
NGINX_USER=""
[ "$(id -u)" = 0 ] && NGINX_USER="user root;"
cat > "$WORK/nginx.conf" <<NGINX
$NGINX_USER
worker_processes 2;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
daemon off;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    keepalive_requests 100000;
    client_body_temp_path $WORK/nginx-tmp;
    proxy_temp_path $WORK/nginx-tmp;
    fastcgi_temp_path $WORK/nginx-tmp;
    uwsgi_temp_path $WORK/nginx-tmp;
    scgi_temp_path $WORK/nginx-tmp;
    server { listen 127.0.0.1:$P; root $WORK/files; }
}
NGINX
start_bg "$P" nginx -c "$WORK/nginx.conf"
RATE_NGINX=$(wrk_rate "http://127.0.0.1:$P/raw.img")
stop_last
printf '  nbdcopy raw:   qemu-nbd %s s, nbdkit file %s s\n' "$SEQ_QEMU" "$SEQ_NBDKIT"
printf '  nbdcopy qcow2: qemu-nbd %s s\n' "$SEQ_QEMU_QCOW2"
printf '  random 4 KiB x16: qemu-nbd %s IOPS\n' "$IOPS_QEMU"
printf '  wrk random 4 KiB ranges: nginx %s req/s\n' "$RATE_NGINX"

if [ "$HAVE_SERVE" = 0 ]; then
    echo "bench: $VMEDIA has no 'serve' command (a build from before issue 11): only the peers were measured" >&2
    exit 3
fi

# --- vmedia serve --------------------------------------------------------------------------
LIB="$WORK/library"
if [ ! -d "$LIB" ]; then
    "$VMEDIA" --library "$LIB" library init >/dev/null
    "$VMEDIA" --library "$LIB" library add bench-raw "$RAW" >/dev/null
    "$VMEDIA" --library "$LIB" library add bench-qcow2 "$QCOW2" >/dev/null
fi
# One row of vmedia figures with `--cache-size $1`.
vmedia_row() {
    local cache=$1 HP NP
    HP=$(free_port); NP=$(free_port)
    start_bg "$NP" "$VMEDIA" --library "$LIB" serve --listen 127.0.0.1 --http-port "$HP" --nbd-port "$NP" \
        --cache-size "$cache" --state "$WORK/state"
    wait_port "$HP" "$LAST"
    SEQ_VMEDIA=$(copy_time "nbd://127.0.0.1:$NP/bench-raw")
    SEQ_VMEDIA_QCOW2=$(copy_time "nbd://127.0.0.1:$NP/bench-qcow2/disk")
    IOPS_VMEDIA=$(random_iops "nbd://127.0.0.1:$NP/bench-raw")
    RATE_VMEDIA=$(wrk_rate "http://127.0.0.1:$HP/images/bench-raw")
    stop_last
    printf '  nbdcopy raw %s s: %.2fx qemu-nbd, %.2fx nbdkit file (target >= 1.0x each)\n' "$SEQ_VMEDIA" \
        "$(calc "$SEQ_QEMU / $SEQ_VMEDIA")" "$(calc "$SEQ_NBDKIT / $SEQ_VMEDIA")"
    printf '  nbdcopy zstd qcow2 (disk export) %s s: %.2fx qemu-nbd on the qcow2 (target >= 1.5x)\n' \
        "$SEQ_VMEDIA_QCOW2" "$(calc "$SEQ_QEMU_QCOW2 / $SEQ_VMEDIA_QCOW2")"
    printf '  random 4 KiB x16 %s IOPS: %.2fx qemu-nbd (target >= 1.0x)\n' "$IOPS_VMEDIA" "$(calc "$IOPS_VMEDIA / $IOPS_QEMU")"
    printf '  wrk random 4 KiB ranges %s req/s: %.2fx nginx (target >= 1.0x)\n' "$RATE_VMEDIA" "$(calc "$RATE_VMEDIA / $RATE_NGINX")"
}
DATA_MIB=$((SIZE_MIB * 3 / 4))
if [ "$DATA_MIB" -gt 256 ]; then FIT="do not fit: the miss path"; else FIT="fit"; fi
echo "== vmedia serve --cache-size 256M (the default; the image's $DATA_MIB MiB of data $FIT)"
vmedia_row 256M
FULL_CACHE=${BENCH_CACHE:-2G}
echo "== vmedia serve --cache-size $FULL_CACHE (holds the whole image, as the page cache does for the peers)"
vmedia_row "$FULL_CACHE"

# --- trace preload on a cold S3 library ----------------------------------------------------
if [ "$NO_S3" = 1 ]; then
    echo "== trace preload: skipped (BENCH_NO_S3=1)"
    exit 0
fi
echo "== trace preload: ${TRACE_MIB} MiB image on SeaweedFS, boot pattern replayed cold, without and with the trace"
bench_start_seaweedfs
ENDPOINT="http://127.0.0.1:$S3"
S3LIB=(--library s3://bench/lib --s3-endpoint "$ENDPOINT")
head -c $((TRACE_MIB * 1024 * 1024)) "$RAW" > "$WORK/files/trace.img"
"$VMEDIA" "${S3LIB[@]}" library init >/dev/null
"$VMEDIA" "${S3LIB[@]}" library add bench-trace "$WORK/files/trace.img" >/dev/null
# A boot-like pattern: runs of 64 KiB reads in 40 clusters spread over the image (kernel,
# initrd, libraries, configuration), 1500 reads in all, fixed seed.
"$PY" - "$((TRACE_MIB * 1024 * 1024))" > "$WORK/boot.pattern" <<'PY'
import random, sys
size = int(sys.argv[1]); rng = random.Random(7); chunk = 64 * 1024
for _ in range(40):
    offset = rng.randrange(size // chunk - 64) * chunk
    for _ in range(rng.randrange(20, 56)):
        print(offset, chunk)
        offset += chunk * rng.choice([1, 1, 1, 2])
PY
replay_cold() {
    # A fresh daemon: an empty cache, the trace (if any) from the state folder.
    local hp np
    hp=$(free_port); np=$(free_port)
    start_bg "$np" "$VMEDIA" "${S3LIB[@]}" serve --listen 127.0.0.1 --http-port "$hp" --nbd-port "$np" \
        --cache-size 256M --state "$WORK/trace-state"
    REPLAY=$("$PY" "$WORK/replay.py" "nbd://127.0.0.1:$np/bench-trace" "$WORK/boot.pattern" 1)
    # SIGTERM: the daemon drains and keeps what it recorded.
    stop_last
}
replay_cold; T_WITHOUT=$REPLAY
ls "$WORK/trace-state/traces/"*.trace >/dev/null 2>&1 \
    || { echo "bench: the daemon recorded no boot trace under $WORK/trace-state/traces" >&2; exit 1; }
replay_cold; T_WITH=$REPLAY
printf '  first client (records the trace) %s s, after a restart with the trace %s s: %.2fx sooner (target >= 1.37x)\n' \
    "$T_WITHOUT" "$T_WITH" "$(calc "$T_WITHOUT / $T_WITH")"
