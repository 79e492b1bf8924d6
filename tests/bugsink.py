"""A real Sentry-compatible server for the tests: Bugsink (PyPI), SQLite, on loopback.

tests/run.sh installs Bugsink into its own virtual environment (its wheel brings
top-level packages named ``events``, ``issues``... that must not shadow ours);
:class:`Bugsink` configures, provisions and starts it on a free port, and reads
stored events back through its REST API and its kept raw envelopes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

VENV = Path(os.environ.get("KPR_BUGSINK_VENV", Path.home() / ".cache" / "kpr-omprog-bugsink"))

CONF = """
import os
from bugsink.settings.default import *  # noqa
from bugsink.settings.default import DATABASES
_HERE = os.path.dirname(os.path.abspath(__file__))
SECRET_KEY = "test-only-not-secret"
DATABASES["default"]["NAME"] = os.path.join(_HERE, "db.sqlite3")
DATABASES["snappea"]["NAME"] = os.path.join(_HERE, "snappea.sqlite3")
SENTRY_DSN = None
TIME_ZONE = "UTC"
SNAPPEA = {{"TASK_ALWAYS_EAGER": True}}
EMAIL_BACKEND = "django.core.mail.backends.dummy.EmailBackend"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
BUGSINK = {{
    "BASE_URL": "http://127.0.0.1:{port}",
    "SINGLE_USER": True, "SINGLE_TEAM": True, "PHONEHOME": False,
    "INGEST_STORE_BASE_DIR": os.path.join(_HERE, "ingestion"),
    "KEEP_ENVELOPES": 100000,
    "MAX_EVENTS_PER_PROJECT_PER_5_MINUTES": {quota},
    "MAX_EVENTS_PER_PROJECT_PER_HOUR": {quota},
    "MAX_EVENTS_PER_5_MINUTES": {quota},
    "MAX_EVENTS_PER_HOUR": {quota},
}}
"""

PROVISION = """
from django.contrib.auth import get_user_model
from teams.models import Team, TeamMembership, TeamRole
from projects.models import Project, ProjectMembership, ProjectRole
from bsmain.models import AuthToken
u = get_user_model().objects.create_superuser(username="a@example.invalid", email="a@example.invalid", password="x")
t = Team.objects.create(name="t"); TeamMembership.objects.create(team=t, user=u, role=TeamRole.ADMIN, accepted=True)
p = Project.objects.create(team=t, name="kernel")
ProjectMembership.objects.create(project=p, user=u, role=ProjectRole.ADMIN, accepted=True)
print("DSN=" + p.dsn); print("PROJECT=%s" % p.id); print("TOKEN=" + AuthToken.create_full_access(description="t").token)
"""

ANOTHER_PROJECT = """
from django.contrib.auth import get_user_model
from teams.models import Team
from projects.models import Project, ProjectMembership, ProjectRole
p = Project.objects.create(team=Team.objects.get(name="t"), name={name!r})
ProjectMembership.objects.create(project=p, user=get_user_model().objects.get(username="a@example.invalid"),
                                 role=ProjectRole.ADMIN, accepted=True)
print("DSN=" + p.dsn); print("PROJECT=%s" % p.id)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Bugsink:
    def __init__(self, workdir: Path, quota: int = 100000) -> None:
        if not (VENV / "bin" / "gunicorn").exists():
            raise RuntimeError(f"Bugsink is not installed in {VENV}: run tests/run.sh")
        self.work = workdir
        self.port = free_port()
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "bugsink_conf.py").write_text(CONF.format(port=self.port, quota=quota))
        self.env = dict(os.environ, DJANGO_SETTINGS_MODULE="bugsink_conf", PYTHONPATH=str(self.work))
        manage = str(VENV / "bin" / "bugsink-manage")
        template = VENV / "migrated-template"
        if (template / "db.sqlite3").exists():
            for name in ("db.sqlite3", "snappea.sqlite3"):
                (self.work / name).write_bytes((template / name).read_bytes())
        else:
            subprocess.run([manage, "migrate", "-v0"], env=self.env, cwd=self.work, check=True)
            subprocess.run([manage, "migrate", "--database=snappea", "-v0"], env=self.env, cwd=self.work, check=True)
        vals = self._shell(PROVISION)
        self.dsn, self.project, self.token = vals["DSN"], vals["PROJECT"], vals["TOKEN"]
        self.api = f"http://127.0.0.1:{self.port}/api/canonical/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def _shell(self, script: str) -> dict[str, str]:
        out = subprocess.run([str(VENV / "bin" / "bugsink-manage"), "shell", "-v0"], input=script, env=self.env,
                             cwd=self.work, check=True, capture_output=True, text=True).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def add_project(self, name: str) -> tuple[str, str]:
        """Another project in this Bugsink (running or not): its (DSN, project id); pass the id
        as ``project`` to :meth:`events` and the others."""
        vals = self._shell(ANOTHER_PROJECT.format(name=name))
        return vals["DSN"], vals["PROJECT"]

    def start(self) -> None:
        log = open(self.work / "gunicorn.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(VENV / "bin" / "gunicorn"), "--bind", f"127.0.0.1:{self.port}", "--workers", "1", "--timeout", "30",
             "--no-control-socket", "bugsink.wsgi"], env=self.env, cwd=self.work, stdout=log, stderr=log,
            start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health/ready", timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError((self.work / "gunicorn.log").read_text()[-2000:])

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
            self.proc = None

    def _get(self, path: str) -> Any:
        req = urllib.request.Request(f"{self.api}{path}", headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def issues(self, project: str | None = None) -> list[dict[str, Any]]:
        out, url = [], f"/issues/?project={project or self.project}"
        while url:
            page = self._get(url)
            out += page["results"]
            nxt = page.get("next")
            url = nxt.split("/api/canonical/0", 1)[1] if nxt else ""
        return out

    def events(self, project: str | None = None) -> list[dict[str, Any]]:
        """Every stored event (of the first project, or ``project``) with its full data, each with its issue id."""
        out = []
        for issue in self.issues(project):
            page = self._get(f"/events/?issue={issue['id']}&order=asc")
            for e in page["results"]:
                full = self._get(f"/events/{e['id']}/")
                full["issue_title"] = issue.get("calculated_type", ""), issue.get("calculated_value", "")
                out.append(full)
        return out

    def wait_events(self, n: int, timeout: float = 30.0, project: str | None = None) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        events: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            events = self.events(project)
            if len(events) >= n:
                return events
            time.sleep(0.2)
        return events

    def log(self) -> str:
        """What Bugsink logged (gunicorn's stdout and stderr)."""
        return (self.work / "gunicorn.log").read_text(errors="replace")

    def attachments(self) -> dict[str, bytes]:
        """event_id -> attachment bytes, from the raw envelopes Bugsink kept."""
        return {event_id: payload for event_id, (_, payload) in self.attachment_items().items()}

    def attachment_items(self) -> dict[str, tuple[dict[str, Any], bytes]]:
        """event_id -> (item headers, bytes) of its attachment, from the raw envelopes Bugsink kept
        (KEEP_ENVELOPES: the envelope as received, whatever Bugsink made of its items)."""
        db = sqlite3.connect(self.work / "db.sqlite3")
        out: dict[str, tuple[dict[str, Any], bytes]] = {}
        for (data,) in db.execute("SELECT data FROM ingest_envelope"):
            raw = bytes(data)
            header, _, rest = raw.partition(b"\n")
            event_id = json.loads(header).get("event_id", "")
            while rest:
                item_header, _, rest = rest.partition(b"\n")
                if not item_header.strip():
                    continue
                h = json.loads(item_header)
                length = h.get("length")
                payload, rest = (rest[:length], rest[length + 1:]) if length is not None else rest.partition(b"\n")[::2]
                if h.get("type") == "attachment":
                    out[event_id] = (h, payload)
        db.close()
        return out
