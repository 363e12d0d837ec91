# Shared preamble of the bench scripts (sourced, not run): the binary argument, the peer tools,
# the scratch folder.
#
# bench_binary "$0" "$@"     sets VMEDIA to the absolute path of the one argument, an executable
#                            vmedia, or prints the usage and exits 2
# bench_require TOOL...      exits 1 naming the first peer tool missing from PATH
# bench_workdir NAME         sets WORK to BENCH_DIR (created) or to a new temp folder
#                            vmedia-bench-NAME.XXXXXX removed when the script exits
# bench_iso_versions VOLID   makes (once per WORK) input/v1.iso from DATA_MIB MiB of the machine's
#                            package files plus a HOLE_MIB MiB sparse file, and input/v2.iso = v1
#                            + one 1 MiB file; sets SIZE1, SIZE2, IMAGE_DIR, IMAGE
# use_version v1|v2          copies that version to IMAGE (read once so the page cache holds it)

bench_binary() {
  local script=$1
  shift
  if [ $# -ne 1 ] || [ ! -x "$1" ]; then
    echo "usage: $script TARGET_BINARY (an executable vmedia)" >&2
    exit 2
  fi
  VMEDIA=$(realpath "$1")
}

bench_require() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "bench: $tool missing; run scripts/setup.sh" >&2; exit 1; }
  done
}

bench_workdir() {
  if [ -n "${BENCH_DIR:-}" ]; then
    WORK=$(realpath -m "$BENCH_DIR")
    mkdir -p "$WORK"
  else
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/vmedia-bench-$1.XXXXXX")
    trap 'rm -rf "$WORK"' EXIT
  fi
}

bench_iso_versions() {
  # The first DATA_MIB MiB of regular files under /usr/lib and /usr/share (sorted, so the same
  # machine gives the same tree), plus a sparse file of HOLE_MIB MiB.
  if [ ! -f "$WORK/input.done" ]; then
    rm -rf "$WORK/tree" "$WORK/input"
    mkdir -p "$WORK/tree" "$WORK/input"
    find /usr/lib /usr/share -xdev -type f -size +16k -readable -printf '%s %p\n' 2>/dev/null \
      | sort -k2 \
      | awk -v limit=$((DATA_MIB * 1024 * 1024)) '{ total += $1; if (total > limit) next; sub(/^[0-9]+ /, ""); print }' \
      > "$WORK/files.txt"
    tar -cf - --files-from "$WORK/files.txt" 2>/dev/null | tar -xf - -C "$WORK/tree"
    truncate -s "${HOLE_MIB}M" "$WORK/tree/holes.img"
    "$VMEDIA" iso create "$WORK/tree" -o "$WORK/input/v1.iso" --volume-id "$1" \
      --date 2026-01-01 >/dev/null
    head -c $((1024 * 1024)) /dev/urandom > "$WORK/added.bin"
    "$VMEDIA" iso repack "$WORK/input/v1.iso" --add /added/added.bin="$WORK/added.bin" \
      -o "$WORK/input/v2.iso" >/dev/null
    rm -rf "$WORK/tree"
    touch "$WORK/input.done"
  fi
  SIZE1=$(stat -c %s "$WORK/input/v1.iso")
  SIZE2=$(stat -c %s "$WORK/input/v2.iso")
  echo "input: v1.iso $SIZE1 bytes, v2.iso (v1 + one 1 MiB file) $SIZE2 bytes"
  # Each tool reads "image.iso": v1 first, then v2 at the same path.
  IMAGE_DIR="$WORK/image"
  IMAGE="$IMAGE_DIR/image.iso"
  mkdir -p "$IMAGE_DIR"
}

use_version() { cp --reflink=auto "$WORK/input/$1.iso" "$IMAGE"; cat "$IMAGE" > /dev/null; }

# Servers a bench starts: free_port prints a free loopback port; start_bg PORT CMD... starts CMD
# in the background (log in $WORK/server.log, pid in LAST, appended to PIDS) and waits until it
# listens on PORT; bench_stop_servers ends every one in PIDS.
PIDS=()
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {
  local port=$1 pid=$2 i
  for i in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { echo "bench: the server on port $port exited:" >&2; cat "$WORK/server.log" >&2; exit 1; }
    sleep 0.05
  done
  echo "bench: nothing listens on port $port" >&2; exit 1
}
start_bg() { local port=$1; shift; "$@" >"$WORK/server.log" 2>&1 & LAST=$!; PIDS+=("$LAST"); wait_port "$port" "$LAST"; }
bench_stop_servers() { local pid; for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done; }

# bench_start_seaweedfs: SeaweedFS (S3 on a free loopback port, data under $WORK/weed) with
# bucket "bench" created; sets S3 (its port) and exports the AWS_* credentials it accepts.
bench_start_seaweedfs() {
  local weed=${VMEDIA_WEED:-/opt/vmedia-venv/bin/weed} code i
  [ -x "$weed" ] || { echo "bench: SeaweedFS ($weed) missing; run scripts/setup.sh or set BENCH_NO_S3=1" >&2; exit 1; }
  export AWS_ACCESS_KEY_ID=vmedia-bench AWS_SECRET_ACCESS_KEY=vmedia-bench-secret AWS_REGION=us-east-1
  export AWS_DEFAULT_REGION=$AWS_REGION
  rm -rf "$WORK/weed"
  mkdir -p "$WORK/weed/data"
  cat > "$WORK/weed/s3.json" <<JSON
{"identities":[{"name":"bench","credentials":[{"accessKey":"$AWS_ACCESS_KEY_ID","secretKey":"$AWS_SECRET_ACCESS_KEY"}],"actions":["Admin","Read","Write","List","Tagging"]}]}
JSON
  S3=$(free_port)
  start_bg "$S3" "$weed" server -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="$WORK/weed/data" \
    -master.port="$(free_port)" -master.port.grpc="$(free_port)" -master.volumeSizeLimitMB=256 -volume.max=0 \
    -volume.port="$(free_port)" -volume.port.grpc="$(free_port)" \
    -filer -filer.port="$(free_port)" -filer.port.grpc="$(free_port)" -filer.localSocket="$WORK/weed/filer.sock" \
    -s3 -s3.port="$S3" -s3.port.grpc="$(free_port)" -s3.localSocket="$WORK/weed/s3.sock" \
    -s3.port.iceberg=0 -s3.port.lance=0 -s3.config="$WORK/weed/s3.json"
  for i in $(seq 100); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT --aws-sigv4 "aws:amz:$AWS_REGION:s3" \
      --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "http://127.0.0.1:$S3/bench") || true
    [ "$code" = 200 ] && break
    sleep 0.2
  done
  [ "$code" = 200 ] || { echo "bench: SeaweedFS did not create the bucket (HTTP $code)" >&2; exit 1; }
}
