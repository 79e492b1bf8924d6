"""Metrics an operator alerts on, as a Prometheus text file in the state directory.

``metrics_file`` (default ``<state_dir>/metrics.prom``) is rewritten (atomically)
every ``metrics_interval`` seconds by the running receiver, in the format
node_exporter's textfile collector reads (``--collector.textfile.directory``); it
holds counters only, so it is the one file the receiver writes world-readable. A file, not a port: under rsyslog each
omprog receiver (one per shard) is a process rsyslog starts and stops, with no port of
its own to scrape, while each has a state directory; a file also survives the
receiver's restarts between scrapes. Names follow Prometheus' conventions
(``kpr_omprog_`` prefix, ``_total`` counters, base units); no label has a per-host value
(a ``route`` label is a ``[[route]]``'s label, bounded by ``max_routes``).

    >>> from prometheus_client.parser import text_string_to_metric_families
    >>> text = render({"datagrams": 3}, {"open_reports": 1}, {"end_marker": 2}, {}, {"pending": 1}, 5.0)
    >>> sorted(f.name for f in text_string_to_metric_families(text))[:3]
    ['kpr_omprog_datagrams', 'kpr_omprog_delivery_attempts', 'kpr_omprog_open_reports']
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from .shards import shard_of

__all__ = ["render", "write"]

#: counter name (without prefix and _total) -> help
COUNTERS = {
    "datagrams": "Datagrams (or omprog lines) taken in",
    "lines": "Kernel log lines decoded",
    "malformed_input": "omprog lines that were not the drop-in's JSON, skipped",
    "undecodable": "Lines with bytes that were not UTF-8, replaced",
    "malformed_headers": "Extended netconsole headers that did not parse",
    "lines_lost": "Messages senders sent that never arrived (gaps in their msgid sysdata)",
    "dual_format_duplicates": "Lines a host sent twice (a basic and an extended target), the copy dropped",
    "incidents_joined": "Crashes joined to the warning they followed at once (one incident, one report)",
    "lines_joined": "Datagrams with more lines than decoder.max_lines_per_datagram (the rest kept as one line)",
    "starts_ignored": "Crash starts in a datagram that had already opened a report (one report a datagram)",
    "lone_separators": "Reports only a cut-here line opened, with no crash after it (kept as context)",
    "crash_replays": "Crash starts seen again at the kernel time and text of a crash the host already reported "
                     "(netconsole sending the log buffer again; kept as context)",
    "datagrams_cut": "Datagrams longer than assembler.max_datagram_bytes, cut",
    "hosts_evicted": "Hosts heard more than once forgotten at assembler.max_hosts",
    "new_hosts_forgotten": "Hosts heard only once forgotten at assembler.new_hosts (a flood of new sources)",
    "hosts_forgotten_for_bytes": "Idle hosts forgotten at assembler.context_bytes_budget (their context lines' bytes)",
    "test_lines": "netconsole test lines received from clients (kpr-omprog netconsole-script)",
    "heartbeat_lines": "netconsole heartbeat lines received from clients",
    "hosts_not_stored": "New hosts a hosts-table write did not add (hosts.new_per_flush); added at their next line",
    "hosts_dropped": "Hosts dropped from the hosts table at hosts.max_rows (least recently heard first)",
    "reports_folded": "Reports folded by the rate limit (counted in a summary)",
    "summaries": "Rate-limit summaries sent",
    "summaries_dropped": "Folded reports whose summary was pushed out by rate_limit.max_held",
    "journal_failures": "Journal writes that failed (disk full or journal_cap_bytes)",
    "clock_clamped": "omprog receive times too far ahead or behind, replaced by the receiver's clock",
    "ring_waits": "Times the omprog reader found its ring full (omprog.ring_bytes) and waited for the processor",
    "symbolization_hits": "Reports given source lines from the crashing kernel's debug files",
    "symbolization_misses": ("Reports with addresses but no source lines (no debug files for the release, "
                             "or none matched)"),
    "symbolization_timeouts": "Reports sent before all their source lines came (symbols.time_limit)",
}
GAUGES = {
    "open_reports": "Crash reports being collected",
    "open_report_bytes": "Bytes of text the open reports hold (bound: assembler.open_bytes_budget)",
    "hosts_tracked": "Hosts the assembler tracks (bounds: assembler.max_hosts + assembler.new_hosts)",
    "context_bytes": "Bytes the hosts' context lines hold (bound: assembler.context_bytes_budget)",
    "hosts_stored": "Hosts in the hosts table (bound: hosts.max_rows)",
    "hosts_heard_hour": "Hosts in the hosts table heard in the last hour",
    "hosts_heard_day": "Hosts in the hosts table heard in the last day",
    "hosts_heard_week": "Hosts in the hosts table heard in the last week",
    "hosts_silent": "Hosts in the hosts table not heard within hosts.silent_after (their netconsole may be broken)",
    "waiting_for_outbox": "Closed reports waiting for room in the outbox (kept in the journal)",
    "journal_bytes": "Size of the journal of open reports",
    "outbox_bytes": "Bytes the outbox holds against delivery.disk_cap_bytes",
}


class _Snapshot:
    def __init__(self, counters: dict[str, int], gauges: Mapping[str, float], closed: dict[str, int],
                 attempts: dict[tuple[str, str], int], outbox: dict[str, int], oldest_age: float) -> None:
        self.args = counters, gauges, closed, attempts, outbox, oldest_age

    def collect(self) -> Iterator[Metric]:
        counters, gauges, closed, attempts, outbox, oldest_age = self.args
        for name, help_text in COUNTERS.items():
            if name in counters:
                yield CounterMetricFamily(f"kpr_omprog_{name}", help_text, value=counters[name])
        for name, help_text in GAUGES.items():
            if name in gauges:
                yield GaugeMetricFamily(f"kpr_omprog_{name}", help_text, value=gauges[name])
        c = CounterMetricFamily("kpr_omprog_reports_closed", "Crash reports closed, by why they closed",
                                labels=["reason"])
        for reason, n in sorted(closed.items()):
            c.add_metric([reason], n)
        yield c
        c = CounterMetricFamily("kpr_omprog_delivery_attempts",
                                "Attempts to send a report to Sentry, by [[route]] label and result",
                                labels=["route", "result"])
        for (route, result), n in sorted(attempts.items()):
            c.add_metric([route, result], n)
        yield c
        g = GaugeMetricFamily("kpr_omprog_outbox_reports", "Reports in the outbox, by state", labels=["state"])
        for state in ("pending", "local", "dead", "delivered"):
            g.add_metric([state], outbox.get(state, 0))
        yield g
        yield GaugeMetricFamily("kpr_omprog_outbox_oldest_pending_age_seconds",
                                "How long the oldest report waiting for Sentry has waited", value=oldest_age)


class _Labelled:
    def __init__(self, registry: CollectorRegistry, shard: str) -> None:
        self.registry, self.shard = registry, shard

    def collect(self) -> Iterator[Metric]:
        for m in self.registry.collect():
            m.samples = [s._replace(labels={**s.labels, "shard": self.shard}) for s in m.samples]
            yield m


def _labelled(registry: CollectorRegistry, shard: str) -> CollectorRegistry:
    out = CollectorRegistry(auto_describe=False)
    out.register(_Labelled(registry, shard))
    return out


def _registry(*args: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(*args))
    return registry


def render(counters: dict[str, int], gauges: Mapping[str, float], closed: dict[str, int],
           attempts: dict[tuple[str, str], int], outbox: dict[str, int], oldest_age: float) -> str:
    """The exposition text for one snapshot."""
    return generate_latest(_registry(counters, gauges, closed, attempts, outbox, oldest_age)).decode()


def write(path: str, counters: dict[str, int], gauges: Mapping[str, float], closed: dict[str, int],
          attempts: dict[tuple[str, str], int], outbox: dict[str, int], oldest_age: float) -> None:
    """Replace ``path`` with the snapshot (written beside it, then renamed).

    A shard's file (see :mod:`kpr_omprog.shards`) gives every sample a ``shard`` label:
    node_exporter refuses the same series from two files of its directory."""
    registry = _registry(counters, gauges, closed, attempts, outbox, oldest_age)
    shard = shard_of(path)
    if shard is not None:
        registry = _labelled(registry, shard)
    write_to_textfile(path, registry)
    os.chmod(path, 0o644)  # node_exporter runs as its own user
