"""Shared parts of the vmedia load clients: the read pattern, the source file the bytes are
checked against, latency statistics and the JSON report."""

import json
import os
import random
import sys
import time


def load_pattern(path, size, max_len=None):
    """offset,length lines (# comments allowed), clipped to the image size and to max_len."""
    ranges = []
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            offset, length = (int(x) for x in line.split(","))
            if max_len is not None:
                length = min(length, max_len)
            if offset >= size or length <= 0:
                continue
            ranges.append((offset, min(length, size - offset)))
    if not ranges:
        sys.exit(f"{path}: no ranges inside {size} bytes")
    return ranges


def client_ranges(pattern, client, per_client):
    """The ranges one client replays: the whole pattern, or a window of `per_client` ranges
    starting at a place that moves with the client number, so the clients together cover the
    whole pattern while each replays it in its recorded order."""
    if per_client is None or per_client >= len(pattern):
        return list(pattern)
    start = (client * per_client) % len(pattern)
    return [pattern[(start + i) % len(pattern)] for i in range(per_client)]


def random_ranges(size, length, seed):
    """An endless stream of random ranges of `length` bytes, `length`-aligned."""
    rng = random.Random(seed)
    slots = size // length
    while True:
        yield (rng.randrange(slots) * length, length)


class Source:
    """The file the served bytes must equal."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size

    def check(self, offset, data):
        return os.pread(self.fd, len(data), offset) == bytes(data)


class Stats:
    def __init__(self):
        self.start = time.monotonic()
        self.latencies = []
        self.bytes = 0
        self.errors = 0
        self.mismatches = 0
        self.first_mismatch = None
        self.error_samples = []
        # Per whole second since start: [reads ok, errors].
        self.timeline = {}

    def ok(self, latency, nbytes):
        self.latencies.append(latency)
        self.bytes += nbytes
        self._tick(0)

    def error(self, what):
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(str(what))
        self._tick(1)

    def mismatch(self, offset, length):
        self.mismatches += 1
        if self.first_mismatch is None:
            self.first_mismatch = [offset, length]

    def _tick(self, slot):
        second = int(time.monotonic() - self.start)
        self.timeline.setdefault(second, [0, 0])[slot] += 1

    def report(self, **extra):
        elapsed = time.monotonic() - self.start
        lat = sorted(self.latencies)

        def pct(p):
            if not lat:
                return None
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000.0, 3)

        out = {
            "reads": len(lat),
            "bytes": self.bytes,
            "errors": self.errors,
            "mismatches": self.mismatches,
            "first_mismatch": self.first_mismatch,
            "error_samples": self.error_samples,
            "seconds": round(elapsed, 3),
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "max_ms": pct(1.0),
            "mb_per_s": round(self.bytes / elapsed / 1e6, 2) if elapsed > 0 else None,
            "timeline": [[s] + v for s, v in sorted(self.timeline.items())],
        }
        out.update(extra)
        json.dump(out, sys.stdout)
        sys.stdout.write("\n")
        sys.stdout.flush()
