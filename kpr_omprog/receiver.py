"""The receiver: assembler + parsers + durable outbox + delivery, and the original API.

Existing Kernel Panic Receiver scripts keep working with only the import changed::

    import kpr_omprog as kernel_panic_receiver
    kreceiver = kernel_panic_receiver.KernelPanicReceiver('0.0.0.0', 514, 'https://key@sentry.example/1')
    kreceiver.register_parser_tag(parse_kernel_version)
    kreceiver.start_receiving_logs()

``start_receiving_logs()`` listens on UDP, or, when rsyslog runs the script
with ``--omprog`` (the drop-in's ``binary=``), reads omprog's stdin.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from typing import Any

from .config import Config, DeliveryConfig
from .hooks import (
    Parser,
    Parsers,
    default_fingerprint,
    default_message,
    default_title,
    default_user,
)
from .logs import configure
from .ratelimit import RateLimitConfig
from .runtime import Intake, Pipeline, describe, open_journal, open_runtime, parsers_from_config
from .store import LIBRARY_STATE_DIR, StoreError

# The runtime's names stay importable from here, as before 0.2.
__all__ = ["Intake", "KernelPanicReceiver", "Pipeline", "describe", "open_journal", "open_runtime",
           "parsers_from_config"]


class KernelPanicReceiver:
    """The original library API; see the module docstring."""

    # The default parsers, reachable so a user's parser can call and refine them.
    parse_title = staticmethod(default_title)
    parse_user = staticmethod(default_user)
    parse_fingerprint = staticmethod(default_fingerprint)
    parse_message = staticmethod(default_message)

    def __init__(self, listen_ip: str = "0.0.0.0", listen_port: int = 514, *args: Any,
                 config: Config | None = None, state_dir: str | None = None, **settings: Any) -> None:
        # 3 arguments (ip, port, dsn) as in the brief, or 4 (ip, port, "UDP"/"TCP", dsn) as in KPR 0.5.
        dsn: str | None = None
        if len(args) == 1:
            dsn = args[0]
        elif len(args) == 2:
            if str(args[0]).upper() != "UDP":
                raise ValueError(f"protocol {args[0]!r}: only UDP is supported (netconsole sends UDP)")
            dsn = args[1]
        elif args:
            raise TypeError("KernelPanicReceiver(listen_ip, listen_port, sentry_dsn)")
        dsn = settings.pop("sentry_dsn", dsn)
        cfg = config or Config()
        if dsn is not None:
            cfg = replace(cfg, dsn=dsn or None)
        if state_dir is not None:
            cfg = replace(cfg, state_dir=state_dir)
        asm_keys = {k: settings.pop(k) for k in list(settings) if hasattr(cfg.assembler, k)}
        if asm_keys:
            cfg = replace(cfg, assembler=replace(cfg.assembler, **asm_keys))
        del_keys = {k: settings.pop(k) for k in list(settings) if hasattr(DeliveryConfig, k)}
        if del_keys:
            cfg = replace(cfg, delivery=replace(cfg.delivery, **del_keys))
        rl_keys = {k: settings.pop(k) for k in list(settings) if hasattr(RateLimitConfig, k)}
        if rl_keys:
            cfg = replace(cfg, rate_limit=replace(cfg.rate_limit, **rl_keys))
        if settings:
            raise TypeError(f"unknown settings: {', '.join(sorted(settings))}")
        self.listen_ip = listen_ip
        self.listen_port = int(listen_port)
        self.config = cfg
        self.parsers = Parsers()

    # -- the original registration API -------------------------------------------------
    def register_parser_title(self, function: Parser) -> None:
        self.parsers.register_parser_title(function)

    def register_parser_user(self, function: Parser) -> None:
        self.parsers.register_parser_user(function)

    def register_parser_fingerprint(self, function: Parser) -> None:
        self.parsers.register_parser_fingerprint(function)

    def register_parser_message(self, function: Parser) -> None:
        self.parsers.register_parser_message(function)

    def register_parser_tag(self, function: Parser) -> None:
        self.parsers.register_parser_tag(function)

    def register_parser_extra(self, function: Parser) -> None:
        self.parsers.register_parser_extra(function)

    def register_check_hook(self, function: Parser) -> None:
        self.parsers.register_check_hook(function)

    def unregister_parser_tag(self, function: Parser) -> bool:
        return self.parsers.unregister_parser_tag(function)

    def unregister_parser_extra(self, function: Parser) -> bool:
        return self.parsers.unregister_parser_extra(function)

    # -- running ------------------------------------------------------------------------
    def start_receiving_logs(self, argv: list[str] | None = None) -> None:
        """Block, receiving logs: omprog's stdin under rsyslog (``--omprog``), else UDP."""
        argv = sys.argv[1:] if argv is None else argv
        configure(self.config.log_format, self.config.log_level)
        try:
            if "--omprog" in argv or os.environ.get("KPR_OMPROG") == "1":
                from .sources.omprog import run_omprog

                run_omprog(self.config, self.parsers)
            else:
                from .sources.udp import run_udp

                cfg = replace(self.config, udp=replace(self.config.udp,
                                                       listen=(_fmt(self.listen_ip, self.listen_port),)))
                run_udp(cfg, self.parsers)
        except StoreError as e:
            # One line naming the file and the fix, in this API's terms (state_dir=), not the command's.
            raise SystemExit(f"kpr-omprog: error: {e.explain(LIBRARY_STATE_DIR)}") from None
        except OSError as e:
            # One line naming the file or address, not a traceback.
            raise SystemExit(f"kpr-omprog: error: {e}") from None


def _fmt(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
