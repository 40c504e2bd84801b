"""Headless Chromium for page tests: opened as a person would (file://), driven over the DevTools protocol.

One browser process per page: it loads the page, then we read back the DOM state, every console message and
uncaught exception, every failed resource load, and a screenshot.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--disable-dev-shm-usage", "--remote-debugging-port=0", "--hide-scrollbars"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium_or_why_not() -> tuple[str | None, str]:
    """The Chromium binary, or why there is none.

    Never installed here: `make test` installs it before the tests (the Makefile's ``chromium`` target), and a test
    run downloads nothing and changes nothing on the machine.
    """
    path = find_chromium()
    if path:
        return path, ""
    return None, ("Chromium is not installed: `make test` installs it (as root, with apt-get), or "
                  "`apt-get install chromium`")


@dataclass
class PageVisit:
    """What the browser saw."""

    value: Any  # result of the probe expression
    console: list[str] = field(default_factory=list)  # console.* calls and uncaught exceptions
    log_errors: list[str] = field(default_factory=list)  # browser log entries of level error (failed loads, ...)
    screenshot: bytes = b""


class _Session:
    def __init__(self, ws: Any) -> None:
        self.ws, self.next_id, self.events = ws, 0, []

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv(timeout=60))
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic()))))


def visit(binary: str, url: str, probe: str, size: tuple[int, int] = (1280, 900)) -> PageVisit:
    """Open ``url``, wait for its load event, evaluate ``probe`` (JS expression), take a viewport screenshot."""
    from websockets.sync.client import connect

    profile = tempfile.mkdtemp(prefix="alps-chromium-")
    proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
                             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and len(port_file.read_text().splitlines()) >= 2):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"Chromium did not start (exit status {proc.poll()})")
            time.sleep(0.1)
        port, path = port_file.read_text().splitlines()[:2]
        with connect(f"ws://127.0.0.1:{port}{path}", max_size=None) as ws:
            cdp = _Session(ws)
            target = cdp.call("Target.createTarget", url="about:blank")["targetId"]
            sid = cdp.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                cdp.call(f"{domain}.enable", session=sid)
            cdp.call("Emulation.setDeviceMetricsOverride", session=sid, width=size[0], height=size[1],
                     deviceScaleFactor=1, mobile=False)
            cdp.call("Page.navigate", session=sid, url=url)
            cdp.wait_for("Page.loadEventFired")
            value = cdp.call("Runtime.evaluate", session=sid, expression=probe, returnByValue=True)["result"].get("value")
            shot = base64.b64decode(cdp.call("Page.captureScreenshot", session=sid, format="png")["data"])
            result = PageVisit(value, screenshot=shot)
            for e in cdp.events:
                p = e.get("params", {})
                if e.get("method") == "Runtime.consoleAPICalled":
                    result.console.append(f"console.{p['type']}: {[a.get('value') for a in p.get('args', [])]}")
                elif e.get("method") == "Runtime.exceptionThrown":
                    result.console.append(f"exception: {p['exceptionDetails'].get('text')}")
                elif e.get("method") == "Log.entryAdded" and p["entry"]["level"] == "error":
                    result.log_errors.append(f"{p['entry'].get('text')} {p['entry'].get('url', '')}")
            return result
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)
