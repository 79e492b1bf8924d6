"""Score the default title and fingerprint parsers against syzkaller's titled crash corpus.

The corpus is google/syzkaller's pkg/report/testdata/linux/report/ (Apache-2.0); it is
not part of this repository. Pass its directory:

    python tests/benchmarks/title_eval.py /path/to/syzkaller-reports [--show-misses N]

Each log goes through the real pipeline: decoded as classic netconsole datagrams
from one host, assembled, and the first report titled by kpr_omprog.crash.analyze.
Printed: exact-match rate on the clean cases (TITLE set, not corrupted, not
suppressed), the same with lenient frame canonicalisation, false crashes on the
negative cases, and the fingerprint check (same title -> same fingerprint, different
titles -> different fingerprints).
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import sys
from collections import defaultdict

from kpr_omprog.assembler import Assembler, AssemblerConfig
from kpr_omprog.crash import analyze, canonical_function, normalize

SYZ_INTERNAL = re.compile(r"^(?:SYZFAIL|SYZFATAL|go runtime error|trusty|unexpected kernel reboot|lost connection|"
                          r"no output|executor|suppressed|corrupted)")


def load(directory: str) -> list[dict[str, object]]:
    cases = []
    for name in sorted(os.listdir(directory), key=lambda n: (len(n), n)):
        if not name.isdigit():
            continue
        with open(os.path.join(directory, name), "rb") as f:
            raw = f.read().replace(b"\r", b"")
        head, _, body = raw.partition(b"\n\n")
        log = body.split(b"\nREPORT:\n")[0]
        hdr: dict[str, list[str]] = defaultdict(list)
        for line in head.decode("utf-8", "replace").splitlines():
            if ":" in line and not line.startswith("#"):
                k, _, v = line.partition(":")
                hdr[k.strip()].append(v.strip())
        cases.append({"name": name, "title": (hdr.get("TITLE") or [None])[0], "alt": hdr.get("ALT", []),
                      "corrupted": hdr.get("CORRUPTED") == ["Y"], "suppressed": hdr.get("SUPPRESSED") == ["Y"],
                      "log": log})
    return cases


def first_report(log: bytes) -> tuple[str, tuple[str, ...]] | None:
    asm = Assembler(AssemblerConfig(idle_timeout=1e6, max_age=1e7))
    reports = []
    for i, line in enumerate(log.split(b"\n")):
        reports += asm.feed(line + b"\n", ("10.0.0.1", 6665), 1000.0 + i * 1e-4)
        if reports:
            break
    reports += asm.close_all()
    if not reports:
        return None
    info = analyze(reports[0].lines)
    return info.title, info.fingerprint


def lenient(title: str) -> str:
    kind, sep, frame = title.rpartition(" in ")
    if not sep:
        return title
    return f"{kind} in {canonical_function(frame)}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus")
    ap.add_argument("--show-misses", type=int, default=0)
    a = ap.parse_args()
    cases = load(a.corpus)
    clean = [c for c in cases if c["title"] and not c["corrupted"] and not c["suppressed"]]
    prod = [c for c in clean if not SYZ_INTERNAL.match(str(c["title"]))]
    negatives = [c for c in cases if not c["title"]]
    results = {c["name"]: first_report(c["log"]) for c in clean + negatives}  # type: ignore[arg-type]

    def score(subset: list[dict[str, object]]) -> tuple[int, int, int, int]:
        strict = lax = alt = found = 0
        for c in subset:
            r = results[c["name"]]  # type: ignore[index]
            if r is None:
                continue
            found += 1
            got = normalize(r[0])
            want = str(c["title"])
            strict += got == want
            lax += lenient(got) == lenient(want)
            alt += got == want or got in c["alt"] or lenient(got) in {lenient(str(t)) for t in c["alt"]}  # type: ignore[attr-defined]
        return strict, lax, alt, found

    print(f"corpus: {a.corpus}: {len(cases)} cases, {len(clean)} clean, {len(prod)} clean production-relevant, "
          f"{len(negatives)} no-crash")
    for label, subset in (("clean", clean), ("production", prod)):
        s, lx, al, found = score(subset)
        n = len(subset)
        print(f"titles, {label:10s}: exact {s}/{n} = {100 * s / n:.1f}%   lenient {lx}/{n} = {100 * lx / n:.1f}%   "
              f"exact-or-ALT {al}/{n} = {100 * al / n:.1f}%   crash found {found}/{n}")
    false = [c["name"] for c in negatives if results[c["name"]] is not None]  # type: ignore[index]
    print(f"no-crash cases: {len(false)} false crashes of {len(negatives)} {false if false else ''}")
    by_title: dict[str, list[tuple[str, ...]]] = defaultdict(list)
    for c in clean:
        r = results[c["name"]]  # type: ignore[index]
        if r is not None:
            by_title[str(c["title"])].append(r[1])
    same = same_ok = 0
    for fps in by_title.values():
        for x, y in itertools.combinations(fps, 2):
            same += 1
            same_ok += x == y
    fp_titles: dict[tuple[str, ...], set[str]] = defaultdict(set)
    for t, fps in by_title.items():
        for fp in fps:
            fp_titles[fp].add(t)
    diff = sum(1 for x, y in itertools.combinations(list(by_title), 2))
    collisions = sum(len(ts) * (len(ts) - 1) // 2 for ts in fp_titles.values())
    print(f"fingerprints: same-title pairs agreeing {same_ok}/{same} = {100 * same_ok / max(same, 1):.1f}%; "
          f"different-title pairs colliding {collisions}/{diff} = {100 * collisions / max(diff, 1):.3f}%")
    if a.show_misses:
        shown = 0
        for c in prod:
            r = results[c["name"]]  # type: ignore[index]
            got = normalize(r[0]) if r else None
            if got != c["title"]:
                print(f"  miss {c['name']}: want {c['title']!r} got {got!r}")
                shown += 1
                if shown >= a.show_misses:
                    break
    return 0


if __name__ == "__main__":
    sys.exit(main())
