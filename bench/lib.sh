# Shared preamble of the bench scripts (sourced, not run): the binary argument, the peer tools,
# the scratch folder.
#
# bench_binary "$0" "$@"     sets VMEDIA to the absolute path of the one argument, an executable
#                            vmedia, or prints the usage and exits 2
# bench_require TOOL...      exits 1 naming the first peer tool missing from PATH
# bench_workdir NAME         sets WORK to BENCH_DIR (created) or to a new temp folder
#                            vmedia-bench-NAME.XXXXXX removed when the script exits

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
