"""Real crash logs of older and non-x86 kernels, replayed as classic netconsole datagrams
(issue 21): every log gives its expected number of reports, each with its expected title.

The logs, their sources and the reasoning behind each label are in tests/data/kernels/
(SOURCES.md, expected.json); the variants are described in tests/old_kernels.py.
``tests/benchmarks/kernels_eval.py`` prints the same comparison as a table.
"""

from __future__ import annotations

import pytest

from tests.old_kernels import (
    DAMAGED,
    DATA,
    expected,
    first_matches,
    is_separator,
    read_log,
    reports_of,
    run,
    variants_of,
)

LABELS = expected()
CASES = [(name, variant) for name in sorted(LABELS) for variant in variants_of(name)]


def test_every_log_is_labelled_and_every_label_has_its_log() -> None:
    logs = {p.name for p in DATA.iterdir() if p.suffix == ".log"}
    assert logs == set(LABELS)
    assert set(DAMAGED) <= logs
    for name, entry in LABELS.items():
        assert {"arch", "kernel", "source", "reports"} <= set(entry), name
        for r in reports_of(entry):
            assert r.title and not is_separator(r.title), name
            # the expected first line is a line of the log, as the kernel printed it
            assert any(line.decode("utf-8", "replace").rstrip().endswith(r.first.rstrip())
                       for line in read_log(name)), (name, r.first)


def test_the_corpus_covers_every_architecture_and_logs_without_a_crash() -> None:
    arches = {str(e["arch"]) for e in LABELS.values()}
    assert {"x86_64", "i386", "arm", "arm64", "ppc64", "s390x", "mips"} <= arches, arches
    assert any(not e["reports"] for e in LABELS.values())
    assert any(len(reports_of(e)) == 2 for e in LABELS.values())


@pytest.mark.parametrize(("name", "variant"), CASES)
def test_each_crash_is_one_report_with_the_right_title(name: str, variant: str) -> None:
    want = reports_of(LABELS[name])
    got = run(name, variant)
    assert [g.title for g in got] == [w.title for w in want]
    assert not any(is_separator(g.title) for g in got)
    if variant == "found":
        for g, w in zip(got, want, strict=True):
            assert first_matches(g.first, w.first), (g.first, w.first)
