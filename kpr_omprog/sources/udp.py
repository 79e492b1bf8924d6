"""UDP sockets: binding with a large receive buffer, and the receive loop."""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

from ..config import Config
from ..hooks import Parsers
from ..logs import get_logger

__all__ = ["bind", "is_allowed_factory", "run_udp"]

log = get_logger()
# SO_RCVBUFFORCE lets root go past net.core.rmem_max (Linux only).
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def bind(addr: str, port: int, rcvbuf: int, reuseport: bool = False) -> socket.socket:
    """A UDP socket bound to ``addr:port`` with a receive buffer of ``rcvbuf`` bytes if allowed;
    ``reuseport``: one of the ``udp --workers`` sockets sharing the port (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, rcvbuf)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    try:
        sock.bind((addr, port))
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"cannot listen on UDP {addr}:{port}: {e.strerror} (is another receiver or "
                               "rsyslog on that port?)") from None
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if granted < rcvbuf:
        # The kernel doubles what it grants; half of it is what we asked for.
        log.warning("udp_rcvbuf_small", listen=f"{addr}:{port}", asked=rcvbuf, granted=granted,
                    why="bursts may be dropped by the kernel; raise net.core.rmem_max or run as root")
    return sock


def is_allowed_factory(networks: tuple[str, ...]) -> Callable[[str], bool] | None:
    """A predicate ``ip -> bool`` for the sender allow-list; None when it is empty (every
    sender is allowed, and the receive loop skips the call)."""
    if not networks:
        return None
    nets = [ipaddress.ip_network(n, strict=False) for n in networks]
    cache: dict[str, bool] = {}

    def allowed(ip: str) -> bool:
        ok = cache.get(ip)
        if ok is None:
            try:
                a = ipaddress.ip_address(ip)
                ok = any(a in n for n in nets)
            except ValueError:
                ok = False
            if len(cache) > 65536:
                cache.clear()
            cache[ip] = ok
        return ok

    return allowed


def run_udp(cfg: Config, parsers: Parsers, ready: Callable[[list[socket.socket]], None] | None = None,
            reuseport: bool = False) -> int:
    """Listen on every ``cfg.udp.listen`` address until SIGTERM/SIGINT (``reuseport``: as one
    of the ``--workers``, see :mod:`kpr_omprog.sources.workers`)."""
    import signal
    import time

    from ..assembler import Assembler
    from ..config import parse_listen
    from ..runtime import Intake, metrics_path, open_journal, open_runtime

    socks = [bind(*parse_listen(item), cfg.udp.rcvbuf, reuseport) for item in cfg.udp.listen]
    blocking = len(socks) == 1 and _set_timeout(socks[0], 1.0)
    allowed = is_allowed_factory(cfg.udp.allow)
    stop = {"flag": False}

    def on_term(signum: int, frame: object) -> None:
        stop["flag"] = True
        if blocking:
            # The interrupted recvfrom is retried (PEP 475) with the socket's timeout: make it
            # end at once, so a stop takes no longer than the report in hand.
            _set_timeout(socks[0], 0.000001)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    store, delivery, pipeline = open_runtime(cfg, parsers)
    journal = open_journal(cfg)
    intake = Intake(pipeline, Assembler(cfg.assembler), journal, metrics_path(cfg), cfg.metrics_interval)
    intake.recover(time.time())
    log.info("udp_started", listen=list(cfg.udp.listen), dsn_set=bool(cfg.dsn), routes=len(cfg.routes),
             state_dir=cfg.state_dir, pid=os.getpid())
    if ready is not None:
        ready(socks)
    counts = {"received": 0, "refused": 0}
    buf = bytearray(65536)
    view = memoryview(buf)
    asm = intake.assembler

    def take(n: int, src: Any, now: float) -> None:
        counts["received"] += 1
        if allowed is not None and not allowed(src[0]):
            refused = counts["refused"] = counts["refused"] + 1
            if refused in (1, 10, 100, 1000) or refused % 10000 == 0:
                log.warning("udp_sender_refused", sender=src[0], refused=refused, why="not in udp.allow")
            return
        # An exact-size copy: recvfrom(65535) would allocate 64 KiB and shrink it, and the
        # lines kept per host would pin the leftovers (RSS grew 13 MB per 25,000 senders in
        # the memory benchmark; flat with this). IPv6 sources come as (ip, port, flowinfo,
        # scope): the source is (ip, port).
        intake.feed(bytes(view[:n]), src if len(src) == 2 else src[:2], now, now)

    next_tick = 0.0

    def after_batch(now: float) -> None:
        # One journal write per burst: UDP has no acknowledgement, and a burst in memory is
        # no more at risk than the datagrams still in the socket buffer. The periodic work
        # (reports whose time is up, rate-limit summaries, outbox retries, the metrics
        # file) runs when a deadline is due and once a second, not once a wake-up: at
        # 1,000 datagrams/s a wake-up is one datagram.
        nonlocal next_tick
        intake.flush()
        deadline = asm.next_deadline()
        if (deadline is not None and deadline <= now) or now >= next_tick:
            next_tick = now + 1.0
            intake.expire(now)

    def wait_for(now: float) -> float:
        deadline = asm.next_deadline()
        return 1.0 if deadline is None else max(0.001, min(1.0, deadline - now))

    try:
        if blocking:
            _receive_one(socks[0], buf, take, after_batch, wait_for, stop)
        else:
            _receive_many(socks, buf, take, after_batch, wait_for, stop)
    finally:
        intake.expire(time.time())
        intake.flush()
        intake.write_hosts(time.time(), everything=True)  # the hosts table loses no update at a stop
        if delivery is not None:
            delivery.stop(2.0)
        pipeline.close()
        store.close()
        journal.close()
        for s in socks:
            s.close()
        log.info("udp_stopped", datagrams=counts["received"], refused=counts["refused"],
                 open_reports=intake.assembler.open_reports, duplicates=intake.duplicates,
                 counters=intake.counters())
    return 0


# A drained batch is no wider than this: the periodic work and the journal write come
# between batches, and a batch's datagrams share one clock read (the fastest sender
# manages about 1,000 datagrams a millisecond).
_BATCH = 4096
_Take = Callable[[int, Any, float], None]
# Wake-ups that skip the drain after one that found nothing queued (see _receive_one).
_QUIET = 15


def _set_timeout(sock: socket.socket, seconds: float) -> bool:
    """``SO_RCVTIMEO`` as a C ``struct timeval``; False where the platform takes another
    layout (a 32-bit time64 ABI, say): the receive loop then uses a selector."""
    sec = int(seconds)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", sec, int((seconds - sec) * 1e6)))
    except OSError:
        return False
    return True


def _receive_one(sock: socket.socket, buf: bytearray, take: _Take, after_batch: Callable[[float], None],
                 wait_for: Callable[[float], float], stop: dict[str, bool]) -> None:
    """One socket: block in ``recvfrom_into`` itself, with the next deadline as its
    ``SO_RCVTIMEO``, then drain what else is queued without blocking. A wake-up is then
    one system call and one clock read, where a selector adds an ``epoll_wait`` and its
    Python bookkeeping."""
    import time

    sock.setblocking(True)
    recv_into = sock.recvfrom_into
    dontwait = socket.MSG_DONTWAIT
    timeout = -1.0
    quiet = 0
    now = time.time()
    while not stop["flag"]:
        wait = wait_for(now)
        # A system call only when the wait changes by more than a few ms: oversleeping a
        # report's deadline by 5 ms costs nothing, and under load the timeout never fires.
        if wait < timeout - 0.005 or wait > timeout + 0.05:
            timeout = wait
            _set_timeout(sock, wait)
        try:
            n, src = recv_into(buf)
        except BlockingIOError:  # the timeout: a deadline is due, or a second passed
            now = time.time()
            after_batch(now)
            continue
        now = time.time()
        take(n, src, now)
        if quiet:
            quiet -= 1
        else:
            for got in range(_BATCH - 1):
                try:
                    n, src = recv_into(buf, 0, dontwait)
                except BlockingIOError:
                    # Nothing more was queued: at low rates every wake-up is one datagram,
                    # and the probe (a system call and an exception) would cost a quarter of
                    # it, so the next few wake-ups skip it. Under load the blocking call
                    # returns at once and the probe comes back within _QUIET datagrams.
                    if got == 0:
                        quiet = _QUIET
                    break
                take(n, src, now)
        after_batch(now)


def _receive_many(socks: list[socket.socket], buf: bytearray, take: _Take, after_batch: Callable[[float], None],
                  wait_for: Callable[[float], float], stop: dict[str, bool]) -> None:
    """Several sockets (IPv4 and IPv6, say): a selector, then each ready socket drained."""
    import selectors
    import time

    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    now = time.time()
    while not stop["flag"]:
        events = sel.select(wait_for(now))
        now = time.time()
        for key, _ in events:
            recv_into = key.fileobj.recvfrom_into  # type: ignore[union-attr]
            for _ in range(_BATCH):
                try:
                    n, src = recv_into(buf)
                except BlockingIOError:
                    break
                take(n, src, now)
        after_batch(now)
