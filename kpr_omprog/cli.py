"""The ``kpr-omprog`` command."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from . import __version__
from .assembler import Assembler
from .capture import CaptureError, format_line
from .config import Config, ConfigError, load, parse_listen

__all__ = ["main"]

EPILOG = """\
commands:
  replay    print the reports a capture file holds, one JSON object per line
  capture   record live UDP datagrams in the capture format

See https://github.com/ (README) for the operator guide."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One clear line and exit 2, without the usage block.
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE",
                   help="TOML config file (default /etc/kpr-omprog/config.toml if present)")
    p.add_argument("--group-by", choices=["ip", "ip-port"],
                   help="group datagrams by sender IP (default) or by IP and port")
    p.add_argument("--idle-timeout", type=float, metavar="SECONDS",
                   help="close a report after this much silence (default 2)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kpr-omprog", description="Kernel crash reports from netconsole to Sentry.",
                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"kpr-omprog {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("replay", help="print the reports in capture files as JSON lines",
                       description="Read capture files (one datagram per JSON line; '-' is stdin), run them "
                                   "through the assembler and the parsers with the capture's own clock, and "
                                   "print one JSON object per report in the order they closed.")
    p.add_argument("files", nargs="+", metavar="FILE")
    _add_config_args(p)

    p = sub.add_parser("capture", help="record UDP datagrams to a capture file",
                       description="Listen on UDP and write every datagram as a capture line "
                                   '{"t", "src", "data_b64"}, for replay later.')
    p.add_argument("--listen", required=True, action="append", metavar="ADDR:PORT",
                   help="address to listen on, e.g. 0.0.0.0:6666 or [::]:6666 (repeatable)")
    p.add_argument("--out", metavar="FILE", default="-", help="output file (default stdout)")
    p.add_argument("--count", type=int, metavar="N", help="stop after N datagrams")
    p.add_argument("--seconds", type=float, metavar="S", help="stop after S seconds")
    return parser


def _config(args: argparse.Namespace) -> Config:
    cfg = load(getattr(args, "config", None))
    asm = cfg.assembler
    if getattr(args, "group_by", None):
        asm = replace(asm, group_by=args.group_by)
    if getattr(args, "idle_timeout", None) is not None:
        asm = replace(asm, idle_timeout=args.idle_timeout)
    return replace(cfg, assembler=asm)


def _cmd_replay(args: argparse.Namespace, cfg: Config) -> int:
    from .sources.replay import read_captures, replay

    out = sys.stdout
    for report in replay(read_captures(args.files), Assembler(cfg.assembler)):
        out.write(json.dumps(report.to_dict(), ensure_ascii=False) + "\n")
    out.flush()
    return 0


def _cmd_capture(args: argparse.Namespace, cfg: Config) -> int:
    import selectors

    from .sources.udp import bind

    socks = [bind(*parse_listen(item), cfg.udp.rcvbuf) for item in args.listen]
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    out: Any = sys.stdout if args.out == "-" else open(args.out, "a", encoding="ascii")  # noqa: SIM115
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    end = time.monotonic() + args.seconds if args.seconds else None
    n = 0
    try:
        while not stop and (args.count is None or n < args.count):
            timeout = 0.5 if end is None else max(0.0, min(0.5, end - time.monotonic()))
            if end is not None and time.monotonic() >= end:
                break
            for key, _ in sel.select(timeout):
                data, src = key.fileobj.recvfrom(65535)  # type: ignore[union-attr]
                out.write(format_line(data, (src[0], src[1]), time.time()))
                n += 1
            out.flush()
    finally:
        out.flush()
        if out is not sys.stdout:
            out.close()
    sys.stderr.write(f"kpr-omprog capture: {n} datagrams\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        cfg = _config(args)
        handler = {"replay": _cmd_replay, "capture": _cmd_capture}[args.command]
        return handler(args, cfg)
    except (CaptureError, ConfigError) as e:
        sys.stderr.write(f"kpr-omprog {args.command}: error: {e}\n")
        return 2
    except OSError as e:
        sys.stderr.write(f"kpr-omprog {args.command}: error: {e}\n")
        return 1
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
