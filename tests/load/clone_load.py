#!/usr/bin/python3
"""Many clones at once: creates N clones of one base through the daemon's API, connects one
libnbd handle to each `clone/NAME` export, writes 1 MiB of that clone's own pattern to every
clone at the same offset at once, flushes, then reads every clone back: its own 1 MiB (not a
neighbour's) and a range it never wrote (the base's bytes). Prints one JSON report."""

import argparse
import asyncio
import json
import random
import sys
import time
import urllib.parse

import loadlib
import nbdloop

WRITE = 1 << 20


def clone_bytes(prefix, index):
    return random.Random(f"{prefix}-{index}").randbytes(WRITE)


async def create_clones(host, port, base, names, concurrency, ephemeral):
    queue = list(names)
    created = []

    async def worker():
        reader, writer = await asyncio.open_connection(host, port)
        while queue:
            name = queue.pop()
            body = json.dumps({"base": base, "name": name, "ephemeral": ephemeral}).encode()
            writer.write(
                f"POST /api/v1/clones HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            length = 0
            for line in lines[1:]:
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            reply = await reader.readexactly(length)
            if status != 201:
                raise SystemExit(f"create {name}: {status} {reply[:300]!r}")
            created.append(json.loads(reply))
        writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return created


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--api", required=True, help="http://HOST:PORT of the daemon")
    ap.add_argument("--nbd", required=True, help="nbd://HOST:PORT")
    ap.add_argument("--base", required=True, help="NAME[@V] the clones start from")
    ap.add_argument("--source", required=True, help="the base version's bytes")
    ap.add_argument("--clones", type=int, default=500)
    ap.add_argument("--prefix", default="load")
    ap.add_argument("--offset", type=int, default=32 << 20, help="where every clone is written")
    ap.add_argument("--ephemeral", action="store_true")
    args = ap.parse_args()

    source = loadlib.Source(args.source)
    names = [f"{args.prefix}{i}" for i in range(args.clones)]
    api = urllib.parse.urlsplit(args.api)
    t0 = time.monotonic()
    created = asyncio.run(create_clones(api.hostname, api.port, args.base, names, 8,
                                        args.ephemeral))
    create_seconds = time.monotonic() - t0

    def writes(i):
        return [nbdloop.Op("write", args.offset, data=clone_bytes(args.prefix, i)),
                nbdloop.Op("flush")]

    def reads(i):
        mine = clone_bytes(args.prefix, i)
        # A range the clone never wrote: it must still read as the base.
        base_at = args.offset + WRITE + (i % 64) * 4096
        return [
            nbdloop.Op("read", args.offset, WRITE,
                       check=lambda off, data, mine=mine: bytes(data) == mine),
            nbdloop.Op("read", base_at, 4096, check=source.check),
        ]

    conns = [nbdloop.Conn(f"{args.nbd}/clone/{n}", writes(i), i) for i, n in enumerate(names)]
    write_stats = loadlib.Stats()
    nbdloop.run(conns, write_stats)
    conns = [nbdloop.Conn(f"{args.nbd}/clone/{n}", reads(i), i) for i, n in enumerate(names)]
    read_stats = loadlib.Stats()
    nbdloop.run(conns, read_stats)

    # The write report is nested; the top level is the read-back.
    write_report = {
        "ops": len(write_stats.latencies),
        "bytes": write_stats.bytes,
        "seconds": round(time.monotonic() - write_stats.start, 3),
    }
    lat = sorted(write_stats.latencies)
    if lat:
        write_report["p50_ms"] = round(lat[len(lat) // 2] * 1000, 3)
        write_report["p99_ms"] = round(lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000, 3)
    read_stats.report(clones=len(created), create_seconds=round(create_seconds, 3),
                      writes=write_report, protocol="nbd-clones")
    return 1 if read_stats.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
