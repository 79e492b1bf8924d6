"""kpr-omprog: kernel crash reports from netconsole to Sentry.

The pieces users import:

* :class:`Assembler` (with :class:`AssemblerConfig` and :class:`Report`): the
  pure, sans-IO grouping of netconsole datagrams into crash reports.
* :class:`KernelPanicReceiver`: the original Kernel Panic Receiver API.
"""

from __future__ import annotations

__version__ = "0.2.0"

from .assembler import Assembler, AssemblerConfig, Report
from .receiver import KernelPanicReceiver

__all__ = ["Assembler", "AssemblerConfig", "KernelPanicReceiver", "Report", "__version__"]
