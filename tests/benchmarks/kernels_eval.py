"""Score report counts and titles on real logs of old and non-x86 kernels (issue 21).

    .venv/bin/python tests/benchmarks/kernels_eval.py [--variant found|timestamps|fragments|damaged|all]
                                                      [--quiet]

Each log of tests/data/kernels/ is replayed as classic netconsole datagrams (one line a
datagram, see tests/old_kernels.py) and compared with expected.json. Printed: one line a
log and variant, OK or WRONG with the expected and the got titles, then the totals per
variant: logs with the right report count, titles right (the i-th report against the i-th
expected one), and titles that are a separator line (never right).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))
from tests.old_kernels import VARIANTS, expected, first_matches, is_separator, reports_of, run, variants_of


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="all", choices=[*VARIANTS, "all"])
    ap.add_argument("--quiet", action="store_true", help="print only the WRONG lines and the totals")
    args = ap.parse_args(argv)
    labels = expected()
    totals: dict[str, dict[str, int]] = {}
    for name in sorted(labels):
        want = reports_of(labels[name])
        for variant in variants_of(name):
            if args.variant not in ("all", variant):
                continue
            t = totals.setdefault(variant, {"logs": 0, "count_ok": 0, "titles": 0, "titles_ok": 0,
                                            "separators": 0, "firsts": 0, "firsts_ok": 0, "logs_ok": 0})
            got = run(name, variant)
            t["logs"] += 1
            count_ok = len(got) == len(want)
            t["count_ok"] += count_ok
            t["titles"] += len(want)
            t["separators"] += sum(is_separator(g.title) for g in got)
            titles_ok = sum(g.title == w.title for g, w in zip(got, want, strict=False))
            t["titles_ok"] += titles_ok
            firsts_ok = len(want)
            if variant == "found":
                t["firsts"] += len(want)
                firsts_ok = sum(first_matches(g.first, w.first) for g, w in zip(got, want, strict=False))
                t["firsts_ok"] += firsts_ok
            ok = count_ok and titles_ok == len(want) and firsts_ok == len(want)
            t["logs_ok"] += ok
            if ok and args.quiet:
                continue
            print(f"{'OK   ' if ok else 'WRONG'} {variant:10} {name}")
            if not ok:
                print(f"      expected {len(want)}: {[w.title for w in want]}")
                print(f"      got      {len(got)}: {[g.title for g in got]}")
                if variant == "found" and firsts_ok != len(want):
                    print(f"      first lines expected {[w.first for w in want]}")
                    print(f"      first lines got      {[g.first for g in got]}")
    print()
    for variant, t in totals.items():
        firsts = f", first lines right {t['firsts_ok']}/{t['firsts']}" if variant == "found" else ""
        print(f"{variant:10}: logs all right {t['logs_ok']}/{t['logs']}, "
              f"right report count {t['count_ok']}/{t['logs']}, "
              f"titles right {t['titles_ok']}/{t['titles']}{firsts}, separator titles {t['separators']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
