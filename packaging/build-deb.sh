#!/usr/bin/env bash
# Builds target/debian/vmedia_<version>-1_<arch>.deb from an already built vmedia binary, so
# CI packages the binary its tests ran instead of compiling a second, release one:
#   packaging/build-deb.sh                     # target/release/vmedia (cargo build --release)
#   packaging/build-deb.sh target/ci/vmedia    # the `make test` binary
#   packaging/build-deb.sh BINARY --output DIR/ # further words go to cargo deb
# Needs cargo-deb (scripts/setup.sh installs it: cargo install cargo-deb --locked).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd -P)
binary=$(realpath "${1:-$root/target/release/vmedia}")
shift || true
generated=$root/packaging/generated
rm -rf "$generated"
mkdir -p "$generated/man" "$generated/completions"
# Man pages and completions come from the binary's own command definitions.
"$binary" man --out "$generated/man" >/dev/null
gzip -9n "$generated"/man/*.1
"$binary" completions bash >"$generated/completions/vmedia.bash"
"$binary" completions zsh >"$generated/completions/_vmedia"
"$binary" completions fish >"$generated/completions/vmedia.fish"
cd "$root"
# cargo-deb takes the binary from the asset path target/release/vmedia, which it maps to
# target/<profile>/vmedia for --profile: the binary must be one of this checkout's profiles.
case "$binary" in
  "$root"/target/*/vmedia) profile=$(basename "$(dirname "$binary")") ;;
  *) echo "build-deb.sh: $binary is not target/<profile>/vmedia of $root" >&2; exit 1 ;;
esac
cargo deb -p vmedia --no-build --profile "$profile" "$@"
