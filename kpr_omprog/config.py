"""All settings in one place: defaults, the TOML file, and their validation.

``/etc/kpr-omprog/config.toml`` when installed, ``--config FILE`` anywhere;
command-line flags override the file. Every bound of the receiver has a
default here, a key in the file, and a log line when it bites::

    dsn = "https://key@sentry.example/1"   # empty: keep reports in the local store only
    state_dir = "/var/lib/kpr-omprog"

    [assembler]
    group_by = "ip"          # or "ip-port"
    idle_timeout = 2.0

    [udp]
    listen = ["0.0.0.0:514"]
    allow = ["10.0.0.0/8"]   # sender networks; empty means everyone

    [hooks]
    title = "mymodule:parse_title"
    tag = ["mymodule:parse_kernel_version"]

    [[route]]                # senders in these networks go to their own Sentry project
    networks = ["10.1.0.0/16", "2001:db8::/32"]
    dsn = "https://key@sentry.example/2"
    environment = "customer-a"
    tags = { customer = "a" }
    name = "customer-a"

:func:`load` raises :class:`ConfigError` naming the bad key and why.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .assembler import AssemblerConfig
from .event import OWN_TAGS
from .hooks import TAG_LIMIT
from .netconsole import DecoderLimits
from .ratelimit import RateLimitConfig

__all__ = ["DEFAULT_CONFIG_PATH", "Config", "ConfigError", "DeliveryConfig", "HooksConfig", "OmprogConfig",
           "RouteConfig", "SymbolsConfig", "UdpConfig", "load", "parse_listen", "redact_dsn"]

DEFAULT_CONFIG_PATH = Path("/etc/kpr-omprog/config.toml")


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the key and why."""


@dataclass(frozen=True, slots=True)
class UdpConfig:
    listen: tuple[str, ...] = ("0.0.0.0:514",)
    #: bytes asked for SO_RCVBUF (SO_RCVBUFFORCE as root); bursts are lost without it
    rcvbuf: int = 8 << 20
    #: sender networks allowed; empty means every sender
    allow: tuple[str, ...] = ()
    #: receiving processes on the port (SO_REUSEPORT), each with state in <state_dir>/shard-K
    workers: int = 1


@dataclass(frozen=True, slots=True)
class OmprogConfig:
    #: a stdin line longer than this is dropped whole (logged, counted, answered OK):
    #: rsyslog's 64 KiB datagram, JSON-escaped at worst 6 bytes a byte, fits
    max_line_bytes: int = 1 << 20
    #: a ``received`` time further ahead of our clock than this is replaced by our clock
    #: (a forged line or rsyslog's clock jumping must not keep a report open forever)
    max_clock_skew: float = 5.0
    #: lines answered and not yet processed, in a file of this size (omprog-ring): the reader
    #: waits for room when the processor is this far behind, and rsyslog queues the rest
    ring_bytes: int = 32 << 20


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    #: seconds for one HTTP request to Sentry
    timeout: float = 10.0
    #: longest wait between two attempts after errors (seconds)
    backoff_max: float = 300.0
    #: reports sent at the same time
    concurrency: int = 4
    #: the outbox may hold this many bytes; beyond it new reports are refused loudly
    disk_cap_bytes: int = 1 << 30
    #: a report still undelivered after this many seconds is dead-lettered (30 days:
    #: Sentry drops older timestamps anyway)
    max_age: float = 30 * 86400.0
    #: dead-lettered reports (refused by Sentry for good) are kept this long for
    #: `kpr-omprog reports`, counting toward disk_cap_bytes, then pruned oldest first
    dead_retention: float = 7 * 86400.0


@dataclass(frozen=True, slots=True)
class HostsConfig:
    """The hosts table of the store (``kpr-omprog hosts``): every sender heard more than once."""

    #: hosts kept; beyond it the least recently heard are dropped (counted, logged)
    max_rows: int = 1_000_000
    #: once the table is full, new hosts added (each dropping the least recently heard) per
    #: flush_interval at most: a flood of spoofed senders turns the table over no faster
    #: than this (the rest are added at their next line, if there is room then)
    new_per_flush: int = 1000
    #: seconds between two writes of the hosts heard since
    flush_interval: float = 30.0
    #: rows written per step of a write (the receive loop runs between steps)
    flush_batch: int = 5000
    #: a host not heard this long is silent (status, metrics); at most 7 days
    silent_after: float = 86400.0

    def __post_init__(self) -> None:
        for name in ("max_rows", "new_per_flush", "flush_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.flush_interval <= 0:
            raise ValueError("flush_interval must be > 0")
        if not 0 < self.silent_after <= 7 * 86400:
            raise ValueError("silent_after must be > 0 and at most 7 days (604800)")


@dataclass(frozen=True, slots=True)
class HooksConfig:
    """Parsers named as ``module:function``."""

    title: str | None = None
    user: str | None = None
    fingerprint: str | None = None
    message: str | None = None
    check: str | None = None
    tag: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    #: directories the hook modules are imported from, before Python's own path; relative
    #: ones are the config file's; empty: the config file's directory (/etc/kpr-omprog)
    dirs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SymbolsConfig:
    """Source lines for the stack from the crashing kernel's debug files on this host."""

    #: seconds a report may wait for its source lines after it closed (0: no symbolization)
    time_limit: float = 2.0
    #: extra directories, searched before the standard layouts: ``<dir>/<release>/vmlinux``
    #: or ``<dir>/vmlinux-<release>``, and modules' ``<name>.ko`` anywhere under ``<dir>/<release>/``
    dirs: tuple[str, ...] = ()
    #: where distribution debug packages install (``boot/vmlinux-<release>``, ``lib/modules/<release>/``)
    standard_root: str = "/usr/lib/debug"
    #: the symbolizer (elfutils); one process per debug file in use
    tool: str = "eu-addr2line"
    #: symbolizer processes kept running at most (the least recently used is stopped)
    max_processes: int = 4
    #: a symbolizer process holding more memory than this is restarted after use
    max_memory_bytes: int = 1 << 30


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """A ``[[route]]`` table: reports from senders in ``networks`` go to ``dsn``.

    ``dsn`` None: the top-level DSN; "": kept in the local store only. ``environment``
    None: the top-level one. ``tags`` are added to the event's, never replacing ours.
    """

    networks: tuple[str, ...]
    dsn: str | None = None
    environment: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    #: shown in logs, ``kpr-omprog reports`` and the metrics; "" -> ``route[N]`` by position
    name: str = ""


#: the routes' label for senders no [[route]] matches (the top-level dsn and environment)
DEFAULT_ROUTE = "default"
#: tags a route may add (netconsole userdata has the same bound)
ROUTE_TAGS = 16
#: Sentry's bound for tag keys (and their characters)
_TAG_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,32}")
#: a route's name: fit for a log field and a metric label, and never ``route[N]``
_ROUTE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


@dataclass(frozen=True, slots=True)
class Config:
    dsn: str | None = None
    state_dir: str = "/var/lib/kpr-omprog"
    #: the journal of open reports may grow to this many bytes; beyond it, lines of open
    #: reports are still assembled and reported but would not survive a restart (logged)
    journal_cap_bytes: int = 256 << 20
    #: seconds between two rewrites of the metrics file (0: no metrics file)
    metrics_interval: float = 15.0
    #: the metrics file; empty: <state_dir>/metrics.prom. Point it into node_exporter's
    #: textfile directory (Debian: /var/lib/prometheus/node-exporter/kpr_omprog.prom)
    metrics_file: str = ""
    environment: str | None = None
    #: "json", "console" or "auto" (console on a terminal)
    log_format: str = "auto"
    log_level: str = "info"
    assembler: AssemblerConfig = field(default_factory=AssemblerConfig)
    udp: UdpConfig = field(default_factory=UdpConfig)
    omprog: OmprogConfig = field(default_factory=OmprogConfig)
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    hooks: HooksConfig = field(default_factory=HooksConfig)
    symbols: SymbolsConfig = field(default_factory=SymbolsConfig)
    hosts: HostsConfig = field(default_factory=HostsConfig)
    #: ``[[route]]`` tables, first match wins; senders none matches use dsn and environment
    routes: tuple[RouteConfig, ...] = ()
    #: at most this many routes (each is a label value in the metrics, and a delivery state)
    max_routes: int = 1000


def redact_dsn(dsn: str) -> str:
    """A DSN fit to print: its key (and anything that could be one) hidden.

    >>> redact_dsn("https://0123abcd@sentry.example/1")
    'https://***@sentry.example/1'
    >>> redact_dsn("0123abcd-not-a-url")
    '***'
    """
    scheme, sep, rest = dsn.partition("://")
    if not sep:
        return "***"
    _, at, host = rest.rpartition("@")
    return f"{scheme}://***@{host}" if at else f"{scheme}://{rest}"


def parse_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:514"``, ``"[::1]:514"`` or ``":514"`` to (address, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"listen address {value!r}: expected ADDR:PORT, e.g. 0.0.0.0:514 or [::1]:514")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host or "0.0.0.0"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"listen address {value!r}: {host!r} is not an IP address") from None
    return host, int(port)


def _check_type(key: str, value: Any, want: type | tuple[type, ...]) -> Any:
    if isinstance(value, bool) and want in (int, float, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if want is float:
        want = (int, float)
    if not isinstance(value, want):
        names = {int: "an integer", float: "a number", str: "a string", list: "a list", bool: "true/false"}
        exp = names.get(want, "a number") if isinstance(want, type) else "a number"
        raise ConfigError(f"{key}: expected {exp}, got {type(value).__name__} {value!r}")
    return value


def _section(data: dict[str, Any], cls: type, prefix: str, base: Any) -> Any:
    known = {f.name: f for f in fields(cls)}
    updates: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}.{key}"
        f = known.get(key)
        if f is None or f.name == "decoder":
            raise ConfigError(f"{full}: unknown key (known: {', '.join(sorted(k for k in known if k != 'decoder'))})")
        default = getattr(base, key)
        if isinstance(default, tuple):
            _check_type(full, value, list)
            for item in value:
                _check_type(full, item, str)
            value = tuple(value)
        elif isinstance(default, float):
            value = float(_check_type(full, value, float))
        elif isinstance(default, int):
            _check_type(full, value, int)
        elif isinstance(default, str) or default is None:
            _check_type(full, value, str)
        updates[key] = value
    try:
        return replace(base, **updates)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix}: {e}") from None


def from_dict(data: dict[str, Any], base: Config | None = None) -> Config:
    """Build a :class:`Config` from parsed TOML, validating every key."""
    cfg = base or Config()
    top: dict[str, Any] = {}
    sections = {"assembler": AssemblerConfig, "udp": UdpConfig, "omprog": OmprogConfig,
                "rate_limit": RateLimitConfig, "delivery": DeliveryConfig, "hooks": HooksConfig,
                "symbols": SymbolsConfig, "hosts": HostsConfig}
    for key, value in data.items():
        if key in sections:
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a table [{key}]")
            if key == "assembler" and "decoder" in value:
                # [assembler.decoder]: the per-host decoding bounds (DecoderLimits)
                value = dict(value)
                dec = value.pop("decoder")
                if not isinstance(dec, dict):
                    raise ConfigError("assembler.decoder: expected a table [assembler.decoder]")
                limits = _section(dec, DecoderLimits, "assembler.decoder", cfg.assembler.decoder)
                cfg = replace(cfg, assembler=replace(cfg.assembler, decoder=limits))
            cfg = replace(cfg, **{key: _section(value, sections[key], key, getattr(cfg, key))})
        elif key in ("dsn", "state_dir", "environment", "log_format", "log_level", "metrics_file"):
            top[key] = _check_type(key, value, str)
        elif key in ("journal_cap_bytes", "max_routes"):
            top[key] = _check_type(key, value, int)
        elif key == "route":
            if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
                raise ConfigError("route: expected [[route]] tables (an array of tables)")
            top["routes"] = tuple(_route(f"route[{i}]", t) for i, t in enumerate(value))
        elif key == "metrics_interval":
            top[key] = float(_check_type(key, value, float))
        else:
            known = sorted([*sections, "dsn", "state_dir", "environment", "log_format", "log_level",
                            "journal_cap_bytes", "metrics_interval", "metrics_file", "route", "max_routes"])
            raise ConfigError(f"{key}: unknown key (known: {', '.join(known)})")
    cfg = replace(cfg, **top)
    validate(cfg)
    return cfg


def _route(where: str, data: dict[str, Any]) -> RouteConfig:
    """One ``[[route]]`` table, every field checked (``where``: ``route[N]`` for the messages)."""
    known = ("networks", "dsn", "environment", "tags", "name")
    for key in data:
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(known)})")
    if "networks" not in data:
        raise ConfigError(f"{where}: networks is missing (the sender networks it takes, e.g. [\"10.1.0.0/16\"])")
    nets = _check_type(f"{where}.networks", data["networks"], list)
    if not nets:
        raise ConfigError(f"{where}.networks: empty (a route takes at least one network)")
    for i, net in enumerate(nets):
        _check_type(f"{where}.networks[{i}]", net, str)
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(f"{where}.networks[{i}]: {net!r} is not a network (e.g. 10.1.0.0/16 or "
                              "2001:db8::/32)") from None
    dsn = data.get("dsn")
    if dsn is not None:
        _check_dsn(f"{where}.dsn", _check_type(f"{where}.dsn", dsn, str))
    env = data.get("environment")
    if env is not None:
        _check_type(f"{where}.environment", env, str)
        # Sentry refuses these environment names
        if not 1 <= len(env) <= 64 or "/" in env or env == "None" or any(c.isspace() for c in env) \
                or not env.isprintable():
            raise ConfigError(f"{where}.environment: {env!r} is not a Sentry environment (1-64 characters, "
                              "no spaces or '/', not 'None')")
    tags = data.get("tags", {})
    if not isinstance(tags, dict):
        raise ConfigError(f"{where}.tags: expected a table, e.g. tags = {{ customer = \"a\" }}")
    if len(tags) > ROUTE_TAGS:
        raise ConfigError(f"{where}.tags: {len(tags)} tags, at most {ROUTE_TAGS}")
    for key, value in tags.items():
        if not _TAG_KEY.fullmatch(key):
            raise ConfigError(f"{where}.tags: key {key!r} is not a Sentry tag key (1-32 characters of "
                              "A-Z a-z 0-9 _ . : -)")
        if key in OWN_TAGS:
            raise ConfigError(f"{where}.tags.{key}: kpr-omprog sets this tag itself (a route adds tags, it "
                              "never replaces ours)")
        _check_type(f"{where}.tags.{key}", value, str)
        if not 1 <= len(value) <= TAG_LIMIT or not value.isprintable():
            raise ConfigError(f"{where}.tags.{key}: the value must be 1-{TAG_LIMIT} printable characters")
    name = data.get("name", "")
    _check_type(f"{where}.name", name, str)
    if name and (not _ROUTE_NAME.fullmatch(name) or name == DEFAULT_ROUTE):
        raise ConfigError(f"{where}.name: {name!r} must be 1-64 characters of A-Z a-z 0-9 _ . : - "
                          f"(and not {DEFAULT_ROUTE!r}, the label of senders no route takes)")
    return RouteConfig(networks=tuple(nets), dsn=dsn, environment=env,
                       tags=tuple((k, v) for k, v in tags.items()), name=name)


def route_label(index: int, route: RouteConfig) -> str:
    """How logs, ``kpr-omprog reports`` and the metrics name a route: its name, else ``route[N]``."""
    return route.name or f"route[{index}]"


def _check_dsn(key: str, dsn: str) -> None:
    if not dsn:
        return
    from urllib.parse import urlsplit

    try:
        u = urlsplit(dsn)
        ok = u.scheme in ("http", "https") and bool(u.username) and bool(u.hostname) and bool(u.path.strip("/"))
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"{key}: {redact_dsn(dsn)!r} is not a Sentry DSN (expected https://KEY@HOST/PROJECT_ID)")


def validate(cfg: Config) -> None:
    """Check what types alone cannot; raise :class:`ConfigError`."""
    _check_dsn("dsn", cfg.dsn or "")
    if not 1 <= cfg.max_routes <= 10_000:
        raise ConfigError(f"max_routes: {cfg.max_routes} must be 1-10000")
    if len(cfg.routes) > cfg.max_routes:
        raise ConfigError(f"route: {len(cfg.routes)} [[route]] tables, more than max_routes ({cfg.max_routes})")
    names: dict[str, int] = {}
    for i, route in enumerate(cfg.routes):
        if route.name in names:
            raise ConfigError(f"route[{i}].name: {route.name!r} is also route[{names[route.name]}]'s name")
        if route.name:
            names[route.name] = i
    if cfg.log_format not in ("auto", "json", "console"):
        raise ConfigError(f"log_format: {cfg.log_format!r} must be auto, json or console")
    if cfg.log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level: {cfg.log_level!r} must be debug, info, warning or error")
    for item in cfg.udp.listen:
        parse_listen(item)
    for net in cfg.udp.allow:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(f"udp.allow: {net!r} is not a network (e.g. 10.0.0.0/8)") from None
    if not 1 <= cfg.udp.workers <= 64:
        raise ConfigError(f"udp.workers: {cfg.udp.workers} must be 1-64")
    if cfg.omprog.max_line_bytes < 65536:
        raise ConfigError("omprog.max_line_bytes: must be at least 65536")
    if cfg.omprog.ring_bytes < 2 * cfg.omprog.max_line_bytes + 64 or cfg.omprog.ring_bytes % 8:
        raise ConfigError("omprog.ring_bytes: must be a multiple of 8 and hold two of the longest lines "
                          "(2 * omprog.max_line_bytes + 64)")
    if cfg.omprog.max_clock_skew <= 0:
        raise ConfigError("omprog.max_clock_skew: must be > 0")
    if cfg.udp.rcvbuf < 65536:
        raise ConfigError("udp.rcvbuf: must be at least 65536 bytes")
    d = cfg.delivery
    if d.timeout <= 0 or d.backoff_max <= 0 or d.max_age <= 0 or d.dead_retention <= 0:
        raise ConfigError("delivery: timeout, backoff_max, max_age and dead_retention must be > 0")
    if d.concurrency < 1 or d.concurrency > 64:
        raise ConfigError("delivery.concurrency: must be between 1 and 64")
    if cfg.metrics_interval < 0:
        raise ConfigError("metrics_interval: must be >= 0 (0 turns the metrics file off)")
    if cfg.journal_cap_bytes < 1 << 20:
        raise ConfigError("journal_cap_bytes: must be at least 1048576 (1 MiB)")
    if d.disk_cap_bytes < 1 << 20:
        raise ConfigError("delivery.disk_cap_bytes: must be at least 1048576 (1 MiB)")
    sy = cfg.symbols
    if sy.time_limit < 0 or sy.time_limit > 60:
        raise ConfigError("symbols.time_limit: must be between 0 (off) and 60 seconds")
    if sy.max_processes < 1 or sy.max_processes > 64:
        raise ConfigError("symbols.max_processes: must be between 1 and 64")
    if sy.max_memory_bytes < 64 << 20:
        raise ConfigError("symbols.max_memory_bytes: must be at least 67108864 (64 MiB)")
    h = cfg.hooks
    for name in ("title", "user", "fingerprint", "message", "check"):
        spec = getattr(h, name)
        if spec is not None:
            _check_hook_spec(f"hooks.{name}", spec)
    for name in ("tag", "extra"):
        for spec in getattr(h, name):
            _check_hook_spec(f"hooks.{name}", spec)


def _check_hook_spec(key: str, spec: str) -> None:
    mod, sep, func = spec.partition(":")
    if not sep or not mod or not func.isidentifier():
        raise ConfigError(f"{key}: {spec!r} must be 'module:function'")


def load(path: str | os.PathLike[str] | None, base: Config | None = None) -> Config:
    """Read a TOML config file. ``None`` reads the installed default if it exists."""
    if path is None:
        if not DEFAULT_CONFIG_PATH.exists():
            return base or Config()
        path = DEFAULT_CONFIG_PATH
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    try:
        cfg = from_dict(data, base)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    # hook modules are found next to the config file (or in hooks.dirs, relative to it), not
    # in whatever directory the command or rsyslogd happens to run in
    here = os.path.dirname(os.path.abspath(path))
    dirs = tuple(os.path.normpath(os.path.join(here, d)) for d in cfg.hooks.dirs) or (here,)
    return replace(cfg, hooks=replace(cfg.hooks, dirs=dirs))

