from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bugsink import Bugsink


def _running_bugsink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bugsink]:
    server = Bugsink(tmp_path_factory.mktemp("bugsink"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def bugsink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bugsink]:
    yield from _running_bugsink(tmp_path_factory)


@pytest.fixture
def data_dir() -> Path:
    return Path(__file__).parent / "data"


@pytest.fixture
def fresh_bugsink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bugsink]:
    """A Bugsink of the test's own, for tests that count every event."""
    yield from _running_bugsink(tmp_path_factory)
