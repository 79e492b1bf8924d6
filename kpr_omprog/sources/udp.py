"""UDP sockets: binding with a large receive buffer, and the receive loop."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

from ..logs import get_logger

__all__ = ["bind", "is_allowed_factory"]

log = get_logger()
# SO_RCVBUFFORCE lets root go past net.core.rmem_max (Linux only).
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def bind(addr: str, port: int, rcvbuf: int) -> socket.socket:
    """A UDP socket bound to ``addr:port`` with a receive buffer of ``rcvbuf`` bytes if allowed."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, rcvbuf)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((addr, port))
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if granted < rcvbuf:
        # The kernel doubles what it grants; half of it is what we asked for.
        log.warning("udp_rcvbuf_small", listen=f"{addr}:{port}", asked=rcvbuf, granted=granted,
                    why="bursts may be dropped by the kernel; raise net.core.rmem_max or run as root")
    return sock


def is_allowed_factory(networks: tuple[str, ...]) -> Callable[[str], bool]:
    """A predicate ``ip -> bool`` for the sender allow-list (every sender when empty)."""
    if not networks:
        return lambda ip: True
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
