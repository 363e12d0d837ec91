#!/usr/bin/env bash
# Network boot benchmark: vmedia vs its peers on the same files, inside a private network
# namespace (loopback only; never the host's network).
#   TFTP: a 100 MiB file fetched with atftp (blksize 1468, windowsize 16) from
#         vmedia, dnsmasq's TFTP server and atftpd.  Targets: >= 5x dnsmasq, >= 1x atftpd.
#   HTTP: wrk against vmedia and nginx serving the same 8 MiB file (a kernel's size).
#         Target: >= 0.9x nginx.
#         With HYPER_FILES=path/to/hyper-files (bench/hyper-files, built with
#         `cargo build --release --manifest-path bench/hyper-files/Cargo.toml`), also hyper
#         serving the same file, streamed from it and from memory: the measurement behind
#         keeping netboot's own sendfile server (docs/netboot.md).
# Usage: bench/netboot.sh TARGET_BINARY [BASELINE_BINARY]   (e.g. target/release/vmedia)
#   With a second binary (the code before a change), both are measured in the same run, one
#   after the other, and both ratios are printed.
set -euo pipefail

BIN=$(readlink -f "${1:?usage: bench/netboot.sh TARGET_BINARY [BASELINE_BINARY]}")
BASE=${2:+$(readlink -f "$2")}
RUNS=${RUNS:-3}
for tool in ip atftp atftpd dnsmasq nginx wrk; do
    command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/setup.sh" >&2; exit 1; }
done

NS="vmbench-$$"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
ip netns add "$NS"
ip -n "$NS" link set lo up
in_ns() { ip netns exec "$NS" "$@"; }
calc() { awk "BEGIN { print $1 }"; }

ROOT="$WORK/root"
mkdir -p "$ROOT"
head -c $((100 * 1024 * 1024)) /dev/urandom > "$ROOT/big.bin"
head -c $((8 * 1024 * 1024)) /dev/urandom > "$ROOT/kernel.bin"
# atftpd drops to nobody: the files must be world-readable.
chmod 755 "$WORK" "$ROOT"; chmod 644 "$ROOT"/*.bin

# `ip netns exec` execs the server, so $! is the server itself and kill reaches it.
start_bg() { ip netns exec "$NS" "$@" >"$WORK/server.log" 2>&1 & PIDS+=($!); LAST=$!; sleep 1; kill -0 "$LAST" || { echo "$1 did not start:" >&2; cat "$WORK/server.log" >&2; exit 1; }; }
stop_last() { kill "$LAST" 2>/dev/null || true; wait "$LAST" 2>/dev/null || true; sleep 0.5; }

# CPU seconds (user + system) a process has used so far, all threads included.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / hz }' "/proc/$1/stat"; }

# Best of RUNS wall-clock seconds for one atftp fetch, checking the bytes each time. Also sets
# CLIENT_CPU (the atftp client's user+sys seconds in the best run) and SERVER_CPU (the server's
# CPU seconds per transfer, averaged over the runs).
tftp_time() {
    local best="" server_before server_after
    server_before=$(cpu_of "$LAST")
    for _ in $(seq "$RUNS"); do
        rm -f "$WORK/out.bin"
        local t0 t1
        t0=$(date +%s.%N)
        in_ns /usr/bin/time -f '%U %S' -o "$WORK/client.cpu" \
            atftp --option "blksize 1468" --option "windowsize 16" -g -r big.bin -l "$WORK/out.bin" 127.0.0.1 69 >/dev/null 2>&1
        t1=$(date +%s.%N)
        cmp -s "$WORK/out.bin" "$ROOT/big.bin" || { echo "$1: transfer corrupted" >&2; exit 1; }
        local t
        t=$(calc "$t1 - $t0")
        if [ -z "$best" ] || [ "$(calc "$t < $best")" = 1 ]; then
            best=$t
            CLIENT_CPU=$(awk '{ printf "%.3f", $1 + $2 }' "$WORK/client.cpu")
        fi
    done
    server_after=$(cpu_of "$LAST")
    SERVER_CPU=$(calc "($server_after - $server_before) / $RUNS")
    TFTP_TIME=$(printf '%.3f' "$best")
}

echo "== TFTP: 100 MiB, atftp --option 'blksize 1468' --option 'windowsize 16' (best of $RUNS)"
tftp_vmedia() {
    start_bg "$1" netboot serve --no-dhcp --root "$ROOT" --listen 127.0.0.1 --tftp-port 69 --http-port 0
    tftp_time vmedia; stop_last
}
tftp_vmedia "$BIN"
T_VMEDIA=$TFTP_TIME; C_VMEDIA=$CLIENT_CPU; S_VMEDIA=$SERVER_CPU
if [ -n "$BASE" ]; then
    tftp_vmedia "$BASE"
    T_BASE=$TFTP_TIME; C_BASE=$CLIENT_CPU; S_BASE=$SERVER_CPU
fi
start_bg dnsmasq --no-daemon --conf-file=/dev/null --port=0 --enable-tftp --tftp-root="$ROOT" --listen-address=127.0.0.1 --bind-interfaces
tftp_time dnsmasq; stop_last
T_DNSMASQ=$TFTP_TIME; C_DNSMASQ=$CLIENT_CPU; S_DNSMASQ=$SERVER_CPU
start_bg atftpd --daemon --no-fork --logfile /dev/null --port 69 --bind-address 127.0.0.1 "$ROOT"
tftp_time atftpd; stop_last
T_ATFTPD=$TFTP_TIME; C_ATFTPD=$CLIENT_CPU; S_ATFTPD=$SERVER_CPU
printf '  vmedia   %6.3f s   (server CPU %.3f s, atftp client CPU %.3f s)\n' "$T_VMEDIA" "$S_VMEDIA" "$C_VMEDIA"
if [ -n "$BASE" ]; then
    printf '  baseline %6.3f s   (server CPU %.3f s, atftp client CPU %.3f s)   %s\n' "$T_BASE" "$S_BASE" "$C_BASE" "$BASE"
fi
printf '  dnsmasq  %6.3f s   (server CPU %.3f s, atftp client CPU %.3f s)   vmedia is %.1fx faster (target >= 5x)\n' \
    "$T_DNSMASQ" "$S_DNSMASQ" "$C_DNSMASQ" "$(calc "$T_DNSMASQ / $T_VMEDIA")"
printf '  atftpd   %6.3f s   (server CPU %.3f s, atftp client CPU %.3f s)   vmedia is %.2fx as fast (target >= 1x)\n' \
    "$T_ATFTPD" "$S_ATFTPD" "$C_ATFTPD" "$(calc "$T_ATFTPD / $T_VMEDIA")"
if [ -n "$BASE" ]; then
    printf '  baseline: %.1fx dnsmasq, %.2fx atftpd\n' "$(calc "$T_DNSMASQ / $T_BASE")" "$(calc "$T_ATFTPD / $T_BASE")"
fi
# The client's own CPU time bounds any server: windows are strictly request/response, so the
# wall time is at least the client's work per transfer.
printf '  atftp client floor: %.3f s of CPU per transfer, %.2f us per DATA packet; 5x dnsmasq needs %.3f s\n' \
    "$C_VMEDIA" "$(calc "$C_VMEDIA * 1000000 / (104857600 / 1468 + 1)")" "$(calc "$T_DNSMASQ / 5")"
printf '  server CPU per transfer: vmedia uses %.1fx less than dnsmasq, %.1fx less than atftpd\n' \
    "$(calc "$S_DNSMASQ / ($S_VMEDIA > 0 ? $S_VMEDIA : 0.001)")" "$(calc "$S_ATFTPD / ($S_VMEDIA > 0 ? $S_VMEDIA : 0.001)")"

echo "== HTTP: wrk -t2 -c32 -d${WRK_SECS:-8}s on an 8 MiB file"
wrk_rate() {
    # Requests per second of a whole-file GET; every response is the full 8 MiB.
    in_ns wrk -t2 -c32 -d"${WRK_SECS:-8}"s "$1" | awk '/Requests\/sec/ {print $2}'
}
http_vmedia() {
    start_bg "$1" netboot serve --no-dhcp --root "$ROOT" --listen 127.0.0.1 --tftp-port 0 --http-port 8080
    in_ns curl -sf -o "$WORK/k.bin" http://127.0.0.1:8080/kernel.bin && cmp -s "$WORK/k.bin" "$ROOT/kernel.bin" \
        || { echo "$1 does not serve the file" >&2; exit 1; }
    HTTP_RATE=$(wrk_rate http://127.0.0.1:8080/kernel.bin); stop_last
}
http_vmedia "$BIN"; R_VMEDIA=$HTTP_RATE
if [ -n "$BASE" ]; then http_vmedia "$BASE"; R_BASE=$HTTP_RATE; fi
cat > "$WORK/nginx.conf" <<NGINX
user root;
worker_processes 2;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
daemon off;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_body_temp_path $WORK/nginx-tmp;
    proxy_temp_path $WORK/nginx-tmp;
    fastcgi_temp_path $WORK/nginx-tmp;
    uwsgi_temp_path $WORK/nginx-tmp;
    scgi_temp_path $WORK/nginx-tmp;
    server { listen 127.0.0.1:8081; root $ROOT; }
}
NGINX
mkdir -p "$WORK/nginx-tmp"
start_bg nginx -c "$WORK/nginx.conf"
in_ns curl -sf -o "$WORK/k2.bin" http://127.0.0.1:8081/kernel.bin && cmp -s "$WORK/k2.bin" "$ROOT/kernel.bin" || { echo "nginx does not serve the file" >&2; cat "$WORK/nginx-error.log" >&2; exit 1; }
R_NGINX=$(wrk_rate http://127.0.0.1:8081/kernel.bin); stop_last
printf '  vmedia   %8.1f req/s (%.0f MiB/s)\n  nginx    %8.1f req/s (%.0f MiB/s)\n  vmedia is %.2fx nginx (target >= 0.9x)\n' \
    "$R_VMEDIA" "$(calc "$R_VMEDIA * 8")" "$R_NGINX" "$(calc "$R_NGINX * 8")" "$(calc "$R_VMEDIA / $R_NGINX")"
if [ -n "$BASE" ]; then
    printf '  baseline %8.1f req/s (%.0f MiB/s)   %.2fx nginx\n' "$R_BASE" "$(calc "$R_BASE * 8")" "$(calc "$R_BASE / $R_NGINX")"
fi
if [ -n "${HYPER_FILES:-}" ]; then
    for mode in stream memory; do
        start_bg "$(readlink -f "$HYPER_FILES")" "$ROOT" 127.0.0.1:8082 "$mode"
        in_ns curl -sf -o "$WORK/k3.bin" http://127.0.0.1:8082/kernel.bin && cmp -s "$WORK/k3.bin" "$ROOT/kernel.bin" \
            || { echo "hyper-files ($mode) does not serve the file" >&2; exit 1; }
        R_HYPER=$(wrk_rate http://127.0.0.1:8082/kernel.bin); stop_last
        printf '  hyper (%s) %8.1f req/s (%.0f MiB/s)   %.2fx nginx\n' "$mode" "$R_HYPER" "$(calc "$R_HYPER * 8")" "$(calc "$R_HYPER / $R_NGINX")"
    done
fi
