"""One process driving many libnbd handles through the aio API: each connection runs its own
sequence of reads and writes, one command in flight per connection (a booting VM's disk
reads are mostly dependent on each other), all multiplexed on one epoll loop."""

import selectors
import time

import nbd


class Op:
    """A read (checked by `check(offset, data) -> bool`), a write of `data`, or a flush."""

    def __init__(self, kind, offset=0, length=0, data=None, check=None):
        self.kind = kind
        self.offset = offset
        self.length = length
        self.data = data
        self.check = check


class Conn:
    def __init__(self, uri, ops, index):
        self.uri = uri
        self.ops = iter(ops)
        self.index = index
        self.h = None
        self.op = None
        self.buf = None
        self.cookie = None
        self.started = 0.0
        self.registered = 0
        self.dead_until = 0.0

    def connect(self):
        self.h = nbd.NBD()
        self.h.connect_uri(self.uri)


def run(conns, stats, tolerate_errors=False, deadline=None, sel=None):
    """Runs every connection's ops to the end (or to `deadline`: a time.monotonic() value, or
    a function returning one or None, read again on every step so a signal handler can move
    it). Errors raise unless `tolerate_errors`; then they are counted and the connection goes
    on (reconnecting when the server dropped it)."""
    sel = sel or selectors.DefaultSelector()
    active = set()
    current_deadline = deadline if callable(deadline) else (lambda: deadline)

    def past(now, slack=0.0):
        d = current_deadline()
        return d is not None and now > d + slack

    def register(c):
        d = c.h.aio_get_direction()
        ev = 0
        if d & nbd.AIO_DIRECTION_READ:
            ev |= selectors.EVENT_READ
        if d & nbd.AIO_DIRECTION_WRITE:
            ev |= selectors.EVENT_WRITE
        fd = c.h.aio_get_fd()
        if c.registered and c.registered_fd != fd:
            sel.unregister(c.registered_fd)
            c.registered = 0
        if ev == 0:
            ev = selectors.EVENT_READ
        if not c.registered:
            sel.register(fd, ev, c)
            c.registered_fd = fd
        elif c.registered != ev:
            sel.modify(fd, ev, c)
        c.registered = ev

    def drop(c):
        if c.registered:
            try:
                sel.unregister(c.registered_fd)
            except (KeyError, ValueError):
                pass
            c.registered = 0
        try:
            c.h.close()
        except Exception:
            pass
        c.h = None

    def next_op(c):
        if past(time.monotonic()):
            c.op = None
        else:
            c.op = next(c.ops, None)
        if c.op is None:
            active.discard(c)
            drop(c)
            return
        issue(c)

    def issue(c):
        op = c.op
        c.started = time.monotonic()
        try:
            if op.kind == "read":
                c.buf = nbd.Buffer(op.length)
                c.cookie = c.h.aio_pread(c.buf, op.offset)
            elif op.kind == "write":
                c.cookie = c.h.aio_pwrite(op.data, op.offset)
            else:
                c.cookie = c.h.aio_flush()
            register(c)
        except nbd.Error as e:
            failed(c, e)

    def failed(c, e):
        if not tolerate_errors:
            raise SystemExit(f"connection {c.index}: {c.op.kind} at {c.op.offset}: {e}")
        stats.error(e)
        if c.h is None or c.h.aio_is_dead() or c.h.aio_is_closed():
            drop(c)
            c.dead_until = time.monotonic() + 0.2
        else:
            next_op(c)

    def completed(c):
        try:
            done = c.h.aio_command_completed(c.cookie)
        except nbd.Error as e:
            failed(c, e)
            return
        if not done:
            register(c)
            return
        latency = time.monotonic() - c.started
        op = c.op
        if op.kind == "read":
            data = c.buf.to_bytearray()
            if op.check is not None and not op.check(op.offset, data):
                stats.mismatch(op.offset, op.length)
            stats.ok(latency, op.length)
        elif op.kind == "write":
            stats.ok(latency, len(op.data))
        else:
            stats.ok(latency, 0)
        next_op(c)

    for c in conns:
        if c.h is None:
            c.connect()
        active.add(c)
    for c in list(conns):
        next_op(c)
    while active:
        now = time.monotonic()
        for c in list(active):
            if c.h is None and past(now):
                active.discard(c)
            elif c.h is None and now >= c.dead_until:
                try:
                    c.connect()
                    issue(c)
                except nbd.Error as e:
                    stats.error(e)
                    c.h = None
                    c.dead_until = now + 0.2
        for key, mask in sel.select(timeout=0.1):
            c = key.data
            if c.h is None:
                continue
            try:
                if mask & selectors.EVENT_READ:
                    c.h.aio_notify_read()
                if mask & selectors.EVENT_WRITE:
                    c.h.aio_notify_write()
            except nbd.Error as e:
                failed(c, e)
                continue
            completed(c)
        if past(now, 30):
            raise SystemExit(f"{len(active)} connections still busy 30 s after the deadline")
