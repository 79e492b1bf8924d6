"""kpr-omprog: kernel crash reports from netconsole to Sentry.

The pieces users import:

* :class:`Assembler` (with :class:`AssemblerConfig` and :class:`Report`): the
  pure, sans-IO grouping of netconsole datagrams into crash reports.
"""

from __future__ import annotations

from .assembler import Assembler, AssemblerConfig, Report

__version__ = "0.1.0"

__all__ = ["Assembler", "AssemblerConfig", "Report", "__version__"]
