"""install.sh --with-bugsink's DSN rule and Bugsink settings (kpr_omprog/bugsink_setup.py).

The rule: Bugsink's DSN goes into kpr-omprog's config only where its dsn is empty (or is
this Bugsink's own at another port); an operator's DSN is never replaced. The guest test
(tests/test_install_systemd.py) runs the whole of --with-bugsink as root under systemd.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from kpr_omprog.bugsink_setup import bugsink_conf, set_dsn

ROOT = Path(__file__).resolve().parent.parent
OURS = "http://0123456789abcdef0123456789abcdef@127.0.0.1:8000/1"
# what install.sh writes on a first install
FRESH = ('# kpr-omprog configuration; see README.\ndsn = ""\nstate_dir = "/var/lib/kpr-omprog"\n\n'
         '[udp]\nlisten = ["0.0.0.0:514", "[::]:514"]\n')


def test_an_empty_dsn_becomes_bugsinks_and_the_rest_of_the_file_is_kept() -> None:
    new, what = set_dsn(FRESH, OURS)
    assert what == "set"
    assert tomllib.loads(new)["dsn"] == OURS
    assert new.replace(new.splitlines()[1], 'dsn = ""') == FRESH  # only that line changed
    assert set_dsn(new, OURS) == (new, "same")  # a second run changes nothing


def test_an_operators_dsn_is_never_replaced() -> None:
    for theirs in ("https://KEY@sentry.example/1", "http://otherkey@127.0.0.1:8000/1",
                   "http://0123456789abcdef0123456789abcdef@10.0.0.5:8000/1"):
        text = FRESH.replace('dsn = ""', f'dsn = "{theirs}"  # ours, do not touch')
        assert set_dsn(text, OURS) == (text, "kept")


def test_bugsinks_own_dsn_follows_its_port() -> None:
    text, _ = set_dsn(FRESH, OURS.replace(":8000", ":8001"))
    new, what = set_dsn(text, OURS)
    assert what == "moved" and tomllib.loads(new)["dsn"] == OURS


@pytest.mark.parametrize("text", [
    '[udp]\nlisten = ["0.0.0.0:514"]\n',                      # no dsn key: one before the first table
    "state_dir = '/x'\ndsn = ''\n[symbols]\ndirs = []\n",       # literal strings
    'dsn = ""',                                                # no final newline
    '[udp]\ndsn = "not the top level"\n',                      # a table's dsn is not the top-level one
])
def test_the_dsn_is_written_at_the_top_level_whatever_the_layout(text: str) -> None:
    new, what = set_dsn(text, OURS)
    assert what == "set"
    parsed = tomllib.loads(new)
    assert parsed["dsn"] == OURS
    assert {k: v for k, v in parsed.items() if k != "dsn"} == {k: v for k, v in tomllib.loads(text).items()
                                                                  if k != "dsn"}


def test_the_script_edits_the_file_in_place_keeping_its_mode(tmp_path: Path) -> None:
    conf = tmp_path / "config.toml"
    conf.write_text(FRESH)
    conf.chmod(0o640)
    script = [sys.executable, str(ROOT / "kpr_omprog" / "bugsink_setup.py"), "set-dsn", str(conf), OURS]
    r = subprocess.run(script, capture_output=True, text=True, check=True)
    assert r.stdout == "set\n" and tomllib.loads(conf.read_text())["dsn"] == OURS
    assert conf.stat().st_mode & 0o777 == 0o640
    assert subprocess.run(script, capture_output=True, text=True, check=True).stdout == "same\n"
    conf.write_text("dsn = [\n")
    bad = subprocess.run(script, capture_output=True, text=True)
    assert bad.returncode == 2 and str(conf) in bad.stderr


def test_bugsinks_settings_listen_on_loopback_and_keep_data_under_the_state_dir() -> None:
    text = bugsink_conf(8123, "/var/lib/kpr-omprog-bugsink")
    compile(text, "bugsink_conf.py", "exec")
    assert '"BASE_URL": "http://127.0.0.1:8123",' in text  # install.sh reads the port back from this line
    assert '"/var/lib/kpr-omprog-bugsink/db.sqlite3"' in text
    assert '"PHONEHOME": False' in text and '"TASK_ALWAYS_EAGER": True' in text
