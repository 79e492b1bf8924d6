"""``install.sh --with-bugsink``: a local Bugsink for operators without a Sentry.

Bugsink is a Sentry-compatible server (pip-installable, SQLite, one process). install.sh
runs this file as a script; it imports nothing of the package, so it runs with the
system's python3 and with Bugsink's own virtual environment alike:

* ``conf --port P --state DIR`` prints Bugsink's settings module (``bugsink_conf.py``):
  loopback only, SQLite under DIR, events digested as they arrive (no worker process);
* ``provision`` runs in Bugsink's environment as its user (install.sh pipes this file to
  its python): migrations, the admin user (only when missing, with the password in
  ``$KPR_BUGSINK_ADMIN_PASSWORD``), the team and the project, then prints ``DSN=...``;
  a second run finds them all and changes nothing;
* ``set-dsn CONFIG DSN`` writes the DSN into kpr-omprog's config only where its ``dsn``
  is empty, or is this Bugsink's own DSN at another port; an operator's DSN is kept.
  Prints what it did: ``set``, ``same``, ``moved`` or ``kept``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import tomllib
from urllib.parse import urlsplit

__all__ = ["ADMIN", "PROJECT", "bugsink_conf", "set_dsn"]

ADMIN = "admin"
TEAM = "kpr-omprog"
PROJECT = "kernel"

CONF = """\
# Bugsink's settings for kpr-omprog's local Bugsink, written by install.sh --with-bugsink
# (each run writes it again: change the port with ./install.sh --with-bugsink --bugsink-port N).
import os

from bugsink.settings.default import *  # noqa: F403
from bugsink.settings.default import DATABASES

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "secret_key")) as _f:
    SECRET_KEY = _f.read().strip()
DATABASES["default"]["NAME"] = {db}
DATABASES["snappea"]["NAME"] = {snappea_db}
SENTRY_DSN = None
TIME_ZONE = "UTC"
# One process: an event is digested as it arrives (no snappea worker to run beside it).
SNAPPEA = {{"TASK_ALWAYS_EAGER": True, "WAKEUP_CALLS_DIR": {wakeup}}}
EMAIL_BACKEND = "bugsink.email_backends.QuietConsoleEmailBackend"
# Loopback only: reached on this machine or through an SSH tunnel (http://localhost:PORT).
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
BUGSINK = {{
    "BASE_URL": {base_url},  # kpr-omprog's DSN is built from it
    "SITE_TITLE": "Bugsink (kpr-omprog)",
    "SINGLE_USER": True,
    "SINGLE_TEAM": True,
    "USER_REGISTRATION": "CB_NOBODY",
    "PHONEHOME": False,
    "INGEST_STORE_BASE_DIR": {ingest},
}}
"""


def bugsink_conf(port: int, state: str) -> str:
    """Bugsink's settings module for a server on 127.0.0.1:``port`` keeping its data in ``state``."""
    q = json.dumps  # a Python string literal too, in double quotes (install.sh reads the port back)
    return CONF.format(db=q(f"{state}/db.sqlite3"), snappea_db=q(f"{state}/snappea.sqlite3"),
                       wakeup=q(f"{state}/snappea-wakeup"), base_url=q(f"http://127.0.0.1:{port}"),
                       ingest=q(f"{state}/ingestion"))


# a top-level `dsn = "..."` (or '...') line, with whatever follows the value
_DSN_LINE = re.compile(r"""^(?P<key>[ \t]*dsn[ \t]*=[ \t]*)(?P<value>"[^"\n]*"|'[^'\n]*')(?P<rest>[^\n]*)$""",
                       re.MULTILINE)
_TABLE = re.compile(r"^[ \t]*\[", re.MULTILINE)
COMMENT = "  # the local Bugsink (install.sh --with-bugsink); a Sentry's DSN replaces it"


def _same_bugsink(current: str, dsn: str) -> bool:
    """``current`` is ``dsn`` on another port: the same project key, host and project id."""
    a, b = urlsplit(current), urlsplit(dsn)
    return (a.scheme, a.username, a.hostname, a.path) == (b.scheme, b.username, b.hostname, b.path) \
        and a.hostname == "127.0.0.1"


def set_dsn(text: str, dsn: str) -> tuple[str, str]:
    """The config ``text`` with its top-level ``dsn`` set to ``dsn`` where that is allowed.

    Returns (new text, what happened): ``set`` (it was empty or missing), ``same`` (already
    ``dsn``), ``moved`` (it was this Bugsink at another port) or ``kept`` (the operator's
    own DSN: the text is returned unchanged). Raises ValueError when the text is not TOML
    or the line cannot be found to edit."""
    current = tomllib.loads(text).get("dsn", "")
    if current == dsn:
        return text, "same"
    if current and not _same_bugsink(str(current), dsn):
        return text, "kept"
    table = _TABLE.search(text)
    top_end = table.start() if table else len(text)
    value = json.dumps(dsn)  # a TOML basic string: the DSN has no control characters
    m = _DSN_LINE.search(text, 0, top_end)
    if m is not None:
        rest = m.group("rest") if m.group("rest").strip() else COMMENT
        new = text[:m.start()] + m.group("key") + value + rest + text[m.end():]
    elif current:
        raise ValueError("dsn is set in a form this script does not edit")
    else:
        head = text[:top_end]
        if head and not head.endswith("\n"):
            head += "\n"
        new = head + f"dsn = {value}{COMMENT}\n" + text[top_end:]
    if tomllib.loads(new).get("dsn") != dsn:
        raise ValueError("editing the dsn line did not give the new DSN")
    return new, "moved" if current else "set"


def _write_atomically(path: str, text: str) -> None:
    st = os.stat(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".config.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, st.st_mode & 0o7777)
        try:
            os.chown(tmp, st.st_uid, st.st_gid)
        except PermissionError:
            pass
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def provision() -> None:  # pragma: no cover - runs in Bugsink's environment (the guest test)
    import django  # type: ignore[import-not-found]

    django.setup()
    from django.contrib.auth import get_user_model  # type: ignore[import-not-found]
    from django.core.management import call_command  # type: ignore[import-not-found]
    from projects.models import Project, ProjectMembership, ProjectRole  # type: ignore[import-not-found]
    from teams.models import Team, TeamMembership, TeamRole  # type: ignore[import-not-found]

    call_command("migrate", verbosity=0)
    call_command("migrate", database="snappea", verbosity=0)
    users = get_user_model().objects
    user = users.filter(username=ADMIN).first()
    if user is None:
        password = os.environ.get("KPR_BUGSINK_ADMIN_PASSWORD", "")
        if not password:
            raise SystemExit("bugsink_setup: no admin user yet and no KPR_BUGSINK_ADMIN_PASSWORD to create it")
        user = users.create_superuser(username=ADMIN, email="", password=password)
        print("ADMIN=created")
    else:
        print("ADMIN=exists")
    team = Team.objects.filter(name=TEAM).first() or Team.objects.create(name=TEAM)
    TeamMembership.objects.get_or_create(team=team, user=user, defaults={"role": TeamRole.ADMIN, "accepted": True})
    project = Project.objects.filter(name=PROJECT).first() or Project.objects.create(team=team, name=PROJECT)
    ProjectMembership.objects.get_or_create(project=project, user=user,
                                            defaults={"role": ProjectRole.ADMIN, "accepted": True})
    print(f"PROJECT={project.id}")
    print(f"DSN={project.dsn}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bugsink_setup.py", description="a local Bugsink for install.sh --with-bugsink")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("conf", help="print Bugsink's settings module")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--state", required=True)
    sub.add_parser("provision", help="migrate, admin user, project; prints DSN=")
    s = sub.add_parser("set-dsn", help="write DSN into kpr-omprog's config where its dsn is empty")
    s.add_argument("config")
    s.add_argument("dsn")
    args = ap.parse_args(argv)
    if args.cmd == "conf":
        sys.stdout.write(bugsink_conf(args.port, args.state))
    elif args.cmd == "provision":
        provision()
    else:
        with open(args.config) as f:
            text = f.read()
        try:
            new, what = set_dsn(text, args.dsn)
        except (ValueError, tomllib.TOMLDecodeError) as e:
            print(f"bugsink_setup.py: {args.config}: {e}", file=sys.stderr)
            return 2
        if new != text:
            _write_atomically(args.config, new)
        print(what)
    return 0


if __name__ == "__main__":
    sys.exit(main())
