"""Which Sentry project a report goes to: the config's ``[[route]]`` tables, by sender address.

A hosting provider's customers each get their own DSN, environment and tags; the first
route whose networks hold the sender wins, and senders no route takes use the top-level
``dsn`` and ``environment`` (the route labelled ``default``)::

    router = Router(cfg)
    route = router.match("10.1.2.3")     # when a report closes, by its sender
    route.label, route.dsn, route.environment, route.tags

Matching costs at most one dict lookup per prefix length in use (33 for IPv4, 129 for
IPv6), however many routes and networks there are. An IPv4-mapped IPv6 sender
(``::ffff:10.1.2.3``, a dual-stack socket) matches IPv4 networks too.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .config import DEFAULT_ROUTE, Config, route_label

__all__ = ["Route", "Router"]


@dataclass(frozen=True, slots=True)
class Route:
    """Where a sender's reports go."""

    #: the route's name, ``route[N]`` when it has none, or ``default``
    label: str
    #: None: kept in the local store only
    dsn: str | None
    environment: str | None
    tags: tuple[tuple[str, str], ...] = ()
    #: its name is the operator's (or it is the default): waiting reports follow its DSN
    #: when the config changes. Unnamed routes are known by position only, which a
    #: reordered config would give to another customer, so their reports keep the DSN they had.
    named: bool = True


class Router:
    """The config's routes, compiled: ``match(ip)`` gives the :class:`Route`."""

    def __init__(self, cfg: Config) -> None:
        self.default = Route(DEFAULT_ROUTE, cfg.dsn or None, cfg.environment)
        self.routes: tuple[Route, ...] = tuple(
            Route(route_label(i, r), (cfg.dsn or None) if r.dsn is None else (r.dsn or None),
                  cfg.environment if r.environment is None else r.environment, r.tags, bool(r.name))
            for i, r in enumerate(cfg.routes))
        # per IP version: (prefix length, {network number >> host bits: first route index}),
        # longest prefixes first (any order would do: the lowest index wins)
        tables: dict[int, dict[int, dict[int, int]]] = {4: {}, 6: {}}
        for i, r in enumerate(cfg.routes):
            for text in r.networks:
                net = ipaddress.ip_network(text, strict=False)
                table = tables[net.version].setdefault(net.prefixlen, {})
                table.setdefault(int(net.network_address) >> (net.max_prefixlen - net.prefixlen), i)
        self._tables = {v: sorted(((plen, t) for plen, t in tables[v].items()), reverse=True) for v in (4, 6)}
        self._bits = {4: 32, 6: 128}

    def match(self, ip: str) -> Route:
        """The first route whose networks hold ``ip``; the default route if none (or not an address)."""
        if not self.routes:
            return self.default
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return self.default
        best = self._first(addr.version, int(addr))
        mapped = getattr(addr, "ipv4_mapped", None)
        if mapped is not None:
            best = min(best, self._first(4, int(mapped)))
        return self.routes[best] if best < len(self.routes) else self.default

    def _first(self, version: int, number: int) -> int:
        bits = self._bits[version]
        best = len(self.routes)
        for plen, table in self._tables[version]:
            i = table.get(number >> (bits - plen))
            if i is not None and i < best:
                best = i
        return best

    def labels(self) -> dict[str, str | None]:
        """label -> DSN of the default and the named routes: the ones waiting reports follow."""
        out: dict[str, str | None] = {r.label: r.dsn for r in self.routes if r.named}
        out[DEFAULT_ROUTE] = self.default.dsn
        return out

    @property
    def dsns(self) -> set[str]:
        """Every DSN some route sends to."""
        return {r.dsn for r in (*self.routes, self.default) if r.dsn}
