"""How many reports a host may send: token buckets that fold the rest into counts (pure).

A host that prints the same WARNING a thousand times a second, a crash loop, or a
sender packing one datagram with ``BUG:`` lines must not become a thousand Sentry
events. Between the assembler and the outbox, each closed report passes two gates:

1. the **host** gate, before the report is parsed (so folding costs next to nothing):
   ``host_burst`` reports at once, then one every ``host_interval`` seconds;
2. the **crash** gate, after parsing, per (host, fingerprint): ``crash_burst`` reports
   of the same bug, then one every ``crash_interval`` seconds. Distinct bugs from one
   host each have their own bucket, so a reboot loop still shows every distinct crash.

A report that a gate refuses is *folded*: counted, and the latest one per key is
held. When that key's bucket has a token again, the held report goes out as a
summary carrying ``suppressed_reports`` (how many reports it stands for beyond
itself); a report of the same bug that passes first takes that count along instead.
Offline tools (``replay``, the library's :class:`~kpr_omprog.assembler.Assembler`)
still see every report; replay marks the ones this gate would fold.

    >>> gate = ReportGate(RateLimitConfig(host_burst=2, host_interval=10.0))
    >>> [gate.admit_host("10.0.0.1", t) for t in (0.0, 0.1, 0.2)]
    [True, True, False]
    >>> gate.admit_host("10.0.0.1", 10.2)
    True

Every structure here is bounded by ``max_keys`` buckets and ``max_held`` held
reports; what a bound pushes out is counted in :class:`GateStats`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["GateStats", "Held", "RateLimitConfig", "ReportGate", "TokenBuckets"]

K = TypeVar("K")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """Report rate limits; the defaults let a real crash loop through with every distinct bug."""

    #: reports a host may send back to back before its reports are folded
    host_burst: int = 30
    #: then one report per this many seconds per host
    host_interval: float = 10.0
    #: reports of one bug (host and fingerprint) sent back to back
    crash_burst: int = 3
    #: then one report of that bug per this many seconds (a summary of the folded ones)
    crash_interval: float = 600.0
    #: buckets kept per gate; the least recently used (a host long quiet) is forgotten
    max_keys: int = 100_000
    #: folded reports held for a summary at once; beyond it the oldest is dropped (counted)
    max_held: int = 1000

    def __post_init__(self) -> None:
        for name in ("host_burst", "crash_burst", "max_keys", "max_held"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("host_interval", "crash_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")


class TokenBuckets(Generic[K]):
    """One token bucket per key: ``burst`` tokens, one more every ``interval`` seconds.

    Memory: at most ``max_keys`` buckets; a forgotten key starts again with a full
    bucket, which is what a key that was quiet for ``burst * interval`` has anyway.
    """

    __slots__ = ("_buckets", "burst", "forgotten", "interval", "max_keys")

    def __init__(self, burst: int, interval: float, max_keys: int) -> None:
        self.burst, self.interval, self.max_keys = burst, interval, max_keys
        self._buckets: OrderedDict[K, list[float]] = OrderedDict()  # key -> [tokens, as of]
        self.forgotten = 0

    def _refilled(self, key: K, now: float) -> list[float]:
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)
                self.forgotten += 1
            b = self._buckets[key] = [float(self.burst), now]
        else:
            self._buckets.move_to_end(key)
            if now > b[1]:
                b[0] = min(float(self.burst), b[0] + (now - b[1]) / self.interval)
                b[1] = now
        return b

    def take(self, key: K, now: float) -> bool:
        """Use a token of ``key``'s bucket if it has one."""
        b = self._refilled(key, now)
        if b[0] >= 1.0:
            b[0] -= 1.0
            return True
        return False

    def ready(self, key: K, now: float) -> bool:
        """True if :meth:`take` would succeed (takes nothing)."""
        return self._refilled(key, now)[0] >= 1.0


@dataclass(slots=True)
class Held(Generic[R]):
    """The latest folded report of a key and how many were folded into it."""

    report: R
    parsed: Any
    folded: int


@dataclass(slots=True)
class GateStats:
    #: reports through both gates
    admitted: int = 0
    folded_by_host: int = 0
    folded_by_crash: int = 0
    #: summaries sent (counted by the caller that sends them)
    summaries: int = 0
    #: folded reports whose held summary was pushed out by max_held
    held_dropped: int = 0


class ReportGate(Generic[R]):
    """The two gates, the held summaries and the per-host counts; see the module docstring."""

    def __init__(self, config: RateLimitConfig | None = None) -> None:
        self.config = c = config or RateLimitConfig()
        self.hosts: TokenBuckets[str] = TokenBuckets(c.host_burst, c.host_interval, c.max_keys)
        self.crashes: TokenBuckets[tuple[str, tuple[str, ...]]] = TokenBuckets(c.crash_burst, c.crash_interval,
                                                                               c.max_keys)
        # ("host", host) or ("crash", host, fingerprint) -> the latest folded report
        self._held: OrderedDict[tuple[Any, ...], Held[R]] = OrderedDict()
        self.stats = GateStats()

    def admit_host(self, host: str, now: float) -> bool:
        """Gate 1, before parsing. False: call :meth:`fold` with ``("host", host)``."""
        return self.hosts.take(host, now)

    def admit_crash(self, host: str, fingerprint: tuple[str, ...], now: float) -> bool:
        """Gate 2, after parsing. False: call :meth:`fold` with ``("crash", host, fingerprint)``."""
        if self.crashes.take((host, fingerprint), now):
            self.stats.admitted += 1
            return True
        return False

    def fold(self, key: tuple[Any, ...], report: R, parsed: Any = None, count: int = 1, new: bool = True) -> None:
        """Hold ``report`` as the latest of ``key``, standing for ``count`` reports; the
        one it replaces is counted in it. ``new=False``: already counted when first folded."""
        if new and key[0] == "host":
            self.stats.folded_by_host += count
        elif new:
            self.stats.folded_by_crash += count
        held = self._held.get(key)
        if held is None:
            if len(self._held) >= self.config.max_held:
                _, old = self._held.popitem(last=False)
                self.stats.held_dropped += old.folded
            self._held[key] = Held(report, parsed, count)
        else:
            held.report, held.parsed, held.folded = report, parsed, held.folded + count

    def take_folded(self, key: tuple[Any, ...]) -> int:
        """How many reports were folded under ``key`` (0 if none); they are let go, because
        a newer report of the same key is about to go out carrying that count."""
        held = self._held.pop(key, None) if self._held else None
        return 0 if held is None else held.folded

    def due(self, now: float) -> list[tuple[tuple[Any, ...], Held[R]]]:
        """Held reports whose bucket has a token again: each goes out as a summary
        (its token is taken). Host-gate ones still need parsing and the crash gate."""
        out = []
        for key in list(self._held):
            bucket = self.hosts if key[0] == "host" else self.crashes
            bkey = key[1] if key[0] == "host" else (key[1], key[2])
            if bucket.take(bkey, now):  # type: ignore[arg-type]
                out.append((key, self._held.pop(key)))
        return out

    def take_all(self) -> list[tuple[tuple[Any, ...], Held[R]]]:
        """Every held report, limits or not (stopping: held reports live in memory only)."""
        out, self._held = list(self._held.items()), OrderedDict()
        return out

    @property
    def held(self) -> int:
        return len(self._held)
