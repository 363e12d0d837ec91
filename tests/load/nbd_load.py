#!/usr/bin/python3
"""N libnbd clients, one connection each, in one process: each replays a recorded boot read
pattern (or random reads for a fixed time) on one export, every read checked against the
source file. Prints one JSON report (p50/p99 latency, aggregate MB/s, errors, mismatches)."""

import argparse
import signal
import sys
import time

import loadlib
import nbdloop


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--uri", required=True, help="nbd://HOST:PORT/EXPORT")
    ap.add_argument("--source", required=True, help="the file the export's bytes must equal")
    ap.add_argument("--clients", type=int, default=500)
    ap.add_argument("--pattern", help="offset,length lines to replay")
    ap.add_argument("--max-len", type=int, help="clip every read to this many bytes")
    ap.add_argument("--per-client", type=int, help="ranges per client (a moving window)")
    ap.add_argument("--random-len", type=int, help="random aligned reads of this size instead")
    ap.add_argument("--duration", type=float,
                    help="stop issuing reads after this many seconds (or at SIGTERM)")
    ap.add_argument("--tolerate-errors", action="store_true",
                    help="count read errors instead of failing (fault tests)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    source = loadlib.Source(args.source)
    if args.random_len:
        op_lists = [
            (nbdloop.Op("read", o, n, check=source.check)
             for o, n in loadlib.random_ranges(source.size, args.random_len, args.seed * 100003 + i))
            for i in range(args.clients)
        ]
    else:
        pattern = loadlib.load_pattern(args.pattern, source.size, args.max_len)
        op_lists = [
            [nbdloop.Op("read", o, n, check=source.check)
             for o, n in loadlib.client_ranges(pattern, i, args.per_client)]
            for i in range(args.clients)
        ]
    conns = [nbdloop.Conn(args.uri, ops, i) for i, ops in enumerate(op_lists)]
    for c in conns:
        c.connect()
    # The test waits for this line before it kills clients or the backend.
    print("connected", file=sys.stderr, flush=True)
    stats = loadlib.Stats()
    # SIGTERM ends the run early (reads in flight finish, then the report is printed).
    stop = {"at": time.monotonic() + args.duration if args.duration else None}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(at=time.monotonic()))
    nbdloop.run(conns, stats, tolerate_errors=args.tolerate_errors, deadline=lambda: stop["at"])
    stats.report(clients=args.clients, protocol="nbd")
    return 1 if stats.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
