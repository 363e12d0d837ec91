#!/usr/bin/env python3
"""Runs every test binary of the workspace, two at a time, longest first.

`cargo test` runs its test binaries one after the other. Many of ours spend most of their
time in one QEMU guest (TCG keeps one core busy) or waiting on a server, so the second core
idles; running two binaries at once keeps both busy. Each binary still runs its own tests in
parallel, as cargo would run them.

usage: scripts/run-tests.py [--jobs N] [--profile P] [--dry-run] [-- CARGO_TEST_ARGS...]
  Builds with `cargo test --no-run` and the given arguments, then runs each test executable
  from its package's folder with the environment cargo gives it, printing each binary's output
  as one block when it ends. Exits 1 when any binary fails (all of them run regardless).
  Per-binary wall times go to target/test-times.json and order the next run; without that
  file, ESTIMATES below order it.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import threading
import time

# Seconds each binary took in a full `make test` on 2 cores (CI, session 8), keyed by
# "package/target" as target/test-times.json is; only the order matters. Without that file (a
# fresh clone) these order the run, so the QEMU boot binaries and the other slow ones start
# first and the pool does not end waiting on one of them. A binary missing here counts as
# UNKNOWN_ESTIMATE, a unit-test binary "(lib)"/"(bin)" as 1.
ESTIMATES = {
    "vmedia/netboot_vm": 238, "vmedia/boot": 172, "vmedia/serve_boot": 167,
    "vmedia/iso_boot": 133, "vmedia/vm": 118, "vmedia/serve_clients": 105,
    "vmedia/netboot6_vm": 103, "vmedia/iso_read": 97, "vmedia/disk_formats": 94,
    "vmedia/library": 93, "vmedia/disk_qemu": 83, "vmedia/redfish": 79,
    "vmedia/serve_load": 75, "vmedia/packaging": 40, "vmedia-server/clones_scale": 38,
    "vmedia/library_integrity": 37, "vmedia/iso_hfsplus": 33, "vmedia-server/api_https": 30,
    "vmedia/iso_peers": 25, "vmedia/iso_integrity": 19, "vmedia/fat_esp": 17,
    "vmedia/library_sync": 16,
}
# A binary not in ESTIMATES nor in the times file is assumed this long: ESTIMATES holds every
# binary that took 15 s or more, so one missing there is quick (fuzz corpora, parsers) or new,
# and a new heavy one is timed by its first run. Above the unit tests, below the known slow.
UNKNOWN_ESTIMATE = 15

ROOT = pathlib.Path(__file__).resolve().parent.parent


def build(cargo, profile, extra):
    """Builds the test binaries; returns [(name, executable, package folder, package name)]."""
    cmd = [cargo, "test", "--profile", profile, "--no-run", "--message-format=json-render-diagnostics", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(f"run-tests: `{' '.join(cmd)}` failed (exit {proc.returncode})")
    found = []
    for line in proc.stdout.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
            continue
        if not msg.get("profile", {}).get("test"):
            continue
        target = msg["target"]
        kind = target["kind"][0]
        manifest = pathlib.Path(msg["manifest_path"])
        package = msg["package_id"]
        pkg_name = manifest.parent.name
        for part in (package.split("#")[-1], package.split(" ")[0]):
            if part and "@" in part:
                pkg_name = part.split("@")[0]
                break
        name = f"{pkg_name}/{target['name']}" + ("" if kind == "test" else f" ({kind})")
        found.append((name, msg["executable"], str(manifest.parent), pkg_name, target["name"]))
    return found


def load_times(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def expected_seconds(name, known):
    """The recorded wall time of binary `name` ("package/target" or "crate (lib)"), else its
    estimate."""
    if name in known:
        return known[name]
    return ESTIMATES.get(name, 1 if " (" in name else UNKNOWN_ESTIMATE)


def run_order(binaries, known):
    """Longest expected first (ties by name, so the order is the same on every run)."""
    return sorted(binaries, key=lambda e: (-expected_seconds(e[0], known), e[0]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="test binaries at once (default 2)")
    parser.add_argument("--profile", default="ci")
    parser.add_argument("--dry-run", action="store_true",
                        help="build, then print the run order with each expected time")
    parser.add_argument("cargo_args", nargs="*")
    args = parser.parse_args()
    cargo = os.environ.get("CARGO", "cargo")

    binaries = build(cargo, args.profile, args.cargo_args)
    times_path = ROOT / "target" / "test-times.json"
    known = load_times(times_path)

    queue = run_order(binaries, known)
    if args.dry_run:
        source = "target/test-times.json" if known else "built-in estimates"
        print(f"run-tests: order ({source}):")
        for entry in queue:
            print(f"  {expected_seconds(entry[0], known):7.1f}s  {entry[0]}")
        return
    lock = threading.Lock()
    results = {}
    started = time.monotonic()

    def run(entry):
        name, exe, folder, pkg_name, crate = entry
        env = dict(os.environ)
        env.update({
            "CARGO_MANIFEST_DIR": folder,
            "CARGO_PKG_NAME": pkg_name,
            "CARGO_CRATE_NAME": crate.replace("-", "_"),
        })
        t0 = time.monotonic()
        proc = subprocess.run([exe], cwd=folder, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        secs = time.monotonic() - t0
        out = proc.stdout.decode("utf-8", "replace")
        with lock:
            results[name] = (proc.returncode, secs, out)
            verdict = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
            print(f"\n===== {name}: {verdict} in {secs:.1f}s "
                  f"[{time.monotonic() - started:.0f}s since start]", flush=True)
            print(out, end="" if out.endswith("\n") else "\n", flush=True)

    def worker():
        while True:
            with lock:
                if not queue:
                    return
                entry = queue.pop(0)
            run(entry)

    threads = [threading.Thread(target=worker) for _ in range(max(1, args.jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    times_path.parent.mkdir(parents=True, exist_ok=True)
    merged = dict(known)
    merged.update({name: round(r[1], 1) for name, r in results.items()})
    times_path.write_text(json.dumps(merged, indent=1, sort_keys=True))

    passed = failed = ignored = 0
    for _, _, out in results.values():
        for line in out.splitlines():
            if line.startswith("test result:"):
                words = line.replace(";", "").split()
                for i, w in enumerate(words):
                    if w == "passed":
                        passed += int(words[i - 1])
                    elif w == "failed":
                        failed += int(words[i - 1])
                    elif w == "ignored":
                        ignored += int(words[i - 1])
    bad = sorted(n for n, r in results.items() if r[0] != 0)
    total = time.monotonic() - started
    print(f"\nrun-tests: {len(results)} binaries, {passed} passed, {failed} failed, "
          f"{ignored} ignored, {total:.0f}s wall with {args.jobs} at once")
    slowest = sorted(results.items(), key=lambda kv: kv[1][1], reverse=True)[:12]
    print("run-tests: slowest: " + ", ".join(f"{n} {r[1]:.0f}s" for n, r in slowest))
    if bad:
        print("run-tests: FAILED binaries: " + ", ".join(bad))
        sys.exit(1)


if __name__ == "__main__":
    main()
