"""UDP sockets: binding with a large receive buffer, and the receive loop."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable

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
    import selectors
    import signal
    import time

    from ..assembler import Assembler
    from ..config import parse_listen
    from ..runtime import Intake, metrics_path, open_journal, open_runtime

    socks = [bind(*parse_listen(item), cfg.udp.rcvbuf, reuseport) for item in cfg.udp.listen]
    for s in socks:
        s.setblocking(False)
    allowed = is_allowed_factory(cfg.udp.allow)
    stop = {"flag": False}

    def on_term(signum: int, frame: object) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    store, delivery, pipeline = open_runtime(cfg, parsers)
    journal = open_journal(cfg)
    intake = Intake(pipeline, Assembler(cfg.assembler), journal, metrics_path(cfg), cfg.metrics_interval)
    intake.recover(time.time())
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    log.info("udp_started", listen=list(cfg.udp.listen), dsn_set=bool(cfg.dsn), routes=len(cfg.routes),
             state_dir=cfg.state_dir, pid=os.getpid())
    if ready is not None:
        ready(socks)
    refused = 0
    received = 0
    buf = bytearray(65536)
    view = memoryview(buf)
    recv_into = socket.socket.recvfrom_into
    asm = intake.assembler
    next_tick = 0.0
    try:
        while not stop["flag"]:
            deadline = asm.next_deadline()
            timeout = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.time()))
            events = sel.select(timeout)
            # One clock read per wake-up: the datagrams drained below came within it, and a
            # batch is no wider than the 1000 datagrams/ms the fastest sender manages.
            now = time.time()
            for key, _ in events:
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                # Drain the socket: one select per burst, not per datagram.
                for _ in range(4096):
                    try:
                        n, src = recv_into(sock, buf)
                    except BlockingIOError:
                        break
                    # An exact-size copy: recvfrom(65535) would allocate 64 KiB and shrink it,
                    # and the lines kept per host would pin the leftovers (RSS grew 13 MB per
                    # 25,000 senders in the memory benchmark; flat with this).
                    data = bytes(view[:n])
                    received += 1
                    if allowed is not None and not allowed(src[0]):
                        refused += 1
                        if refused in (1, 10, 100, 1000) or refused % 10000 == 0:
                            log.warning("udp_sender_refused", sender=src[0], refused=refused,
                                        why="not in udp.allow")
                        continue
                    # IPv6 addresses come as (ip, port, flowinfo, scope): the source is (ip, port)
                    intake.feed(data, src if len(src) == 2 else src[:2], now, now)
            # One journal write per burst: UDP has no acknowledgement, and a burst
            # in memory is no more at risk than the datagrams still in the socket buffer.
            intake.flush()
            # The periodic work (reports whose time is up, rate-limit summaries, outbox
            # retries, the metrics file) runs when a deadline is due and once a second, not
            # once a wake-up: at 1,000 datagrams/s a wake-up is one datagram.
            deadline = asm.next_deadline()
            if (deadline is not None and deadline <= now) or now >= next_tick:
                next_tick = now + 1.0
                intake.expire(now)
    finally:
        intake.expire(time.time())
        intake.flush()
        if delivery is not None:
            delivery.stop(2.0)
        pipeline.close()
        store.close()
        journal.close()
        for s in socks:
            s.close()
        log.info("udp_stopped", datagrams=received, refused=refused, open_reports=intake.assembler.open_reports,
                 duplicates=intake.duplicates, counters=intake.counters())
    return 0
