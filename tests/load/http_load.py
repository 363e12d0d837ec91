#!/usr/bin/python3
"""N HTTP Range clients in one asyncio process, each on its own keep-alive connection,
replaying a recorded boot read pattern on one image URL; every 206 body is checked against the
source file (and its Content-Range against the request). Prints one JSON report."""

import argparse
import asyncio
import sys
import time
import urllib.parse

import loadlib


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length)
    return status, headers, body


async def client(index, host, port, path, ranges, source, stats, tolerate, conn, go):
    reader, writer = conn
    await go.wait()
    for offset, length in ranges:
        started = time.monotonic()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            last = offset + length - 1
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Range: bytes={offset}-{last}\r\n\r\n".encode()
            )
            status, headers, body = await read_response(reader)
            if status != 206:
                raise RuntimeError(f"status {status}: {body[:200]!r}")
            if headers.get("content-range", "").split("/")[0] != f"bytes {offset}-{last}":
                raise RuntimeError(f"Content-Range {headers.get('content-range')!r}")
            if headers.get("connection", "").lower() == "close":
                writer.close()
                writer = None
        except (OSError, RuntimeError, asyncio.IncompleteReadError, ValueError) as e:
            if not tolerate:
                raise SystemExit(f"client {index}: bytes={offset}+{length}: {e}")
            stats.error(e)
            if writer is not None:
                writer.close()
            writer = None
            continue
        if not source.check(offset, body):
            stats.mismatch(offset, length)
        stats.ok(time.monotonic() - started, length)
    if writer is not None:
        writer.close()


async def main_async(args):
    url = urllib.parse.urlsplit(args.url)
    source = loadlib.Source(args.source)
    pattern = loadlib.load_pattern(args.pattern, source.size, args.max_len)
    host, port = url.hostname, url.port or 80

    # Every client connects first (as the NBD clients do), so the read latencies below are
    # those of requests on open keep-alive connections; the connects are reported apart.
    connect_times = []

    async def connect():
        started = time.monotonic()
        conn = await asyncio.open_connection(host, port)
        connect_times.append(time.monotonic() - started)
        return conn

    conns = await asyncio.gather(*(connect() for _ in range(args.clients)))
    connect_times.sort()
    print("connected", file=sys.stderr, flush=True)
    go = asyncio.Event()
    stats = loadlib.Stats()
    tasks = [
        asyncio.ensure_future(client(i, host, port, url.path,
                                     loadlib.client_ranges(pattern, i, args.per_client), source,
                                     stats, args.tolerate_errors, conns[i], go))
        for i in range(args.clients)
    ]
    go.set()
    await asyncio.gather(*tasks)
    stats.report(
        clients=args.clients, protocol="http",
        connect_p50_ms=round(connect_times[len(connect_times) // 2] * 1000, 3),
        connect_max_ms=round(connect_times[-1] * 1000, 3),
    )
    return 1 if stats.mismatches else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", required=True, help="http://HOST:PORT/images/NAME")
    ap.add_argument("--source", required=True)
    ap.add_argument("--clients", type=int, default=500)
    ap.add_argument("--pattern", required=True)
    ap.add_argument("--max-len", type=int)
    ap.add_argument("--per-client", type=int)
    ap.add_argument("--tolerate-errors", action="store_true")
    args = ap.parse_args()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
