"""The README's screenshots: one real crash in Bugsink, before and after symbolization.

    .venv/bin/python -m tests.screenshots [OUT_DIR]     # default tests/screenshots

Not part of the test suite (it needs Chromium: ``apt-get install chromium``). It starts a
local Bugsink as the tests do (tests/bugsink.py), runs ``kpr-omprog udp`` twice and sends
it the same captured oops of tests/kmod/kprcrash.c each time: first with no debug
information, then with the module built with -g under ``symbols.dirs`` (tests/run.sh
builds it in ~/.cache/kpr-omprog-kmod). Both events are one issue. It logs in with
Bugsink's login form, hands the session cookie to a headless Chromium driven over the
DevTools protocol on a pipe (no extra Python package), and writes the issue's two event
pages as ``event-before-symbolization.png`` and ``event-after-symbolization.png``.
"""

from __future__ import annotations

import base64
import http.cookiejar
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.bugsink import Bugsink
from tests.rsyslogd import free_udp_port, udp_bound
from tests.senders import capture, play
from tests.test_symbolize import KMOD_DIR, RELEASE
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
CAPTURE = "kprcrash-NULL_ext_oopspanic"
USER, PASSWORD = "a@example.invalid", "x"  # tests/bugsink.py's throwaway admin
WIDTH, HEIGHT = 1200, 1500


def receive_once(bugsink: Bugsink, work: Path, symbols_dir: Path | None, events: int) -> None:
    """``kpr-omprog udp`` gets the capture once and delivers it; returns when Bugsink has ``events``."""
    port = free_udp_port()
    conf = work / f"config-{events}.toml"
    dirs = f'["{symbols_dir}"]' if symbols_dir else "[]"
    conf.write_text(f'dsn = "{bugsink.dsn}"\n[symbols]\ndirs = {dirs}\nstandard_root = "/nonexistent"\n')
    log = work / f"udp-{events}.log"
    proc = subprocess.Popen([sys.executable, "-m", "kpr_omprog.cli", "udp", "--config", str(conf), "--listen",
                             f"127.0.0.1:{port}", "--state-dir", str(work / f"state-{events}"), "--log-format",
                             "json"], stderr=open(log, "wb"), cwd=ROOT)  # noqa: SIM115
    try:
        wait_for(lambda: udp_bound(port), 20, "kpr-omprog udp to bind its port", proc)
        play(("127.0.0.1", port), {"127.0.0.10": capture(CAPTURE)}, speed=20, timeout=30)
        got = bugsink.wait_events(events, timeout=60)
        assert len(got) >= events, log.read_text()[-2000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


def session_cookie(bugsink: Bugsink) -> str:
    """Logs in through Bugsink's own login form; its session cookie."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    url = f"http://127.0.0.1:{bugsink.port}/accounts/login/"
    page = opener.open(url, timeout=30).read().decode()
    token = page.split('name="csrfmiddlewaretoken" value="', 1)[1].split('"', 1)[0]
    body = urllib.parse.urlencode({"csrfmiddlewaretoken": token, "username": USER, "password": PASSWORD}).encode()
    opener.open(urllib.request.Request(url, data=body, headers={"Referer": url}), timeout=30).read()
    cookie = {c.name: c.value for c in jar}.get("sessionid")
    assert cookie, "Bugsink's login form did not log in"
    return cookie


class Chromium:
    """A headless Chromium and one page, driven with the DevTools protocol over fds 3 and 4."""

    def __init__(self, profile: Path) -> None:
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if exe is None:
            raise SystemExit("no chromium here: apt-get install chromium")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def fds() -> None:  # the browser reads commands on fd 3 and answers on fd 4
            a, b = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             "--disable-extensions", "--force-color-profile=srgb", f"--user-data-dir={profile}",
             "--remote-debugging-pipe", "about:blank"],
            preexec_fn=fds, pass_fds=(3, 4),  # preexec_fn runs before the other fds are closed
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buf = b""
        self._id = 0
        self._events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable", session=True)

    def _read(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buf:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("chromium did not answer")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed its pipe")
            self._buf += chunk
        msg, _, self._buf = self._buf.partition(b"\0")
        return dict(json.loads(msg))

    def call(self, method: str, session: bool = False, timeout: float = 60, **params: Any) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read(timeout)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))
            self._events.append(reply)

    def wait_event(self, method: str, timeout: float = 60) -> None:
        while True:
            for i, e in enumerate(self._events):
                if e.get("method") == method:
                    del self._events[i]
                    return
            self._events.append(self._read(timeout))

    def screenshot(self, url: str, out: Path) -> None:
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=WIDTH, height=HEIGHT,
                  deviceScaleFactor=1, mobile=False)
        self._events.clear()
        self.call("Page.navigate", session=True, url=url)
        self.wait_event("Page.loadEventFired")
        # down to the bottom of the page's content, not the empty viewport below it
        bottom = self.call("Runtime.evaluate", session=True, returnByValue=True, expression=(
            "Math.max(...[...document.body.querySelectorAll('*')].map(e => e.getBoundingClientRect().bottom))"))
        height = min(HEIGHT, int(bottom["result"]["value"]) + 12)
        shot = self.call("Page.captureScreenshot", session=True, format="png",
                         clip={"x": 0, "y": 0, "width": WIDTH, "height": height, "scale": 1})
        out.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except RuntimeError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main() -> int:
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests" / "screenshots"
    ko = KMOD_DIR / "kprcrash.ko"
    if not ko.exists():
        raise SystemExit(f"{ko} missing: tests/run.sh builds tests/kmod with -g")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kpr-shots-") as tmp:
        work = Path(tmp)
        debug = work / "debug"  # symbols.dirs: <dir>/<release of the capture>/kprcrash.ko
        (debug / RELEASE).mkdir(parents=True)
        (debug / RELEASE / "kprcrash.ko").symlink_to(ko)
        bugsink = Bugsink(work / "bugsink")
        try:
            receive_once(bugsink, work, None, 1)
            receive_once(bugsink, work, debug, 2)
            [issue] = bugsink.issues()
            cookie = session_cookie(bugsink)
            browser = Chromium(work / "profile")
            try:
                base = f"http://127.0.0.1:{bugsink.port}"
                browser.call("Network.setCookie", session=True, name="sessionid", value=cookie, url=base)
                for n, name in ((1, "before"), (2, "after")):
                    path = out_dir / f"event-{name}-symbolization.png"
                    browser.screenshot(f"{base}/issues/issue/{issue['id']}/event/{n}/", path)
                    print(f"{path}: {path.stat().st_size} bytes")
            finally:
                browser.close()
        finally:
            bugsink.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
