"""A real browser for the tests: Debian's headless Chromium (/usr/bin/chromium), driven over the Chrome DevTools
Protocol on a pipe (--remote-debugging-pipe: JSON messages ending in NUL on file descriptors 3 and 4), so no
driver, port or download is involved. `make test` installs the chromium package when it is missing.

The browser is kept on this machine by construction: it is given only 127.0.0.1 and file:// URLs, background
networking, component updates, sync and QUIC are off, every host but localhost and 127.0.0.1 resolves to nothing, and
every request the page makes is recorded (`requests`) so a test can assert where they went. Dialogs
(alert, confirm) are recorded in `dialogs` and dismissed.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import subprocess
import threading
import time
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--no-default-browser-check", "--mute-audio",
         "--disable-features=Translate,MediaRouter,OptimizationHints,AutofillServerCommunication",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
         "--allow-file-access-from-files"]  # the static copy's page loads its data files by <script src>


def require_chromium() -> Path:
    """The browser, or a failure that says how to install it (never a silent skip)."""
    if not CHROMIUM.exists():
        import pytest

        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install -y chromium chromium-driver); "
                    "the browser tests need Debian's headless Chromium", pytrace=False)
    return CHROMIUM


class BrowserError(RuntimeError):
    pass


class Chromium:
    """One headless Chromium with one page; a context manager."""

    def __init__(self, profile: Path, width: int = 1280, height: int = 900):
        require_chromium()
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        # file descriptors above 10, so that moving them to 3 and 4 in the child cannot clobber each other
        child_in = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
        child_out = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
        os.close(to_browser_r)
        os.close(from_browser_w)

        def to_3_and_4() -> None:
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        self.log = open(profile.parent / f"{profile.name}-chromium.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
             "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, close_fds=False, preexec_fn=to_3_and_4)
        os.close(child_in)
        os.close(child_out)
        self._write = to_browser_w
        self._read = from_browser_r
        self._next_id = 0
        self._replies: dict[int, queue.Queue] = {}
        self._lock = threading.Lock()
        self.events: list[dict] = []
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        self.console: list[str] = []
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Network"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    # -- the protocol
    def _pump(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._read, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                for q in list(self._replies.values()):
                    q.put({"error": {"message": "the browser closed the pipe"}})
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                self._dispatch(json.loads(raw))

    def _dispatch(self, message: dict) -> None:
        if "id" in message:
            with self._lock:
                q = self._replies.pop(message["id"], None)
            if q is not None:
                q.put(message)
            return
        method, params = message.get("method"), message.get("params", {})
        self.events.append(message)
        if method == "Page.javascriptDialogOpening":
            self.dialogs.append(params.get("message", ""))
            threading.Thread(target=self.call, args=("Page.handleJavaScriptDialog", {"accept": False}),
                             daemon=True).start()
        elif method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        elif method == "Runtime.consoleAPICalled":
            self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            self.console.append("exception: " + json.dumps(params.get("exceptionDetails", {}))[:500])

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            reply: queue.Queue = queue.Queue()
            self._replies[ident] = reply
        message = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        try:
            answer = reply.get(timeout=timeout)
        except queue.Empty:
            raise BrowserError(f"{method}: no answer in {timeout} s") from None
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error'].get('message')}")
        return answer.get("result", {})

    def call(self, method: str, params: dict | None = None) -> dict:
        """A command to the page."""
        return self.send(method, params, session=self.session)

    # -- what the tests do
    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}: {result['exceptionDetails'].get('text')} "
                               f"{result['exceptionDetails'].get('exception', {}).get('description', '')}")
        return result["result"].get("value")

    def open(self, url: str, timeout: float = 30) -> str:
        """Go to url (a new page, or the same page at another #view) and wait until the page says it is
        ready or showed an error; returns that state."""
        self.evaluate("document.documentElement && (document.documentElement.dataset.state = 'stale')")
        self.call("Page.navigate", {"url": url})
        return self.wait_state(timeout)

    def wait_state(self, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.evaluate("document.documentElement ? document.documentElement.dataset.state : ''")
            if state in ("ready", "error"):
                return state
            time.sleep(0.05)
        raise BrowserError(f"the page did not get ready in {timeout} s (console: {self.console[-5:]})")

    def wait_for(self, expression: str, timeout: float = 30):
        """The value of expression once it is truthy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.05)
        raise BrowserError(f"{expression[:80]} stayed false for {timeout} s (console: {self.console[-5:]})")

    def click(self, selector: str, timeout: float = 30) -> str:
        """Click the first element matching selector and wait for the view it opens."""
        self.evaluate("document.documentElement.dataset.state = 'stale'")
        found = self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
                              "if (!e) return false; e.click(); return true; })()")
        if not found:
            raise BrowserError(f"nothing matches {selector!r}")
        return self.wait_state(timeout)

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except BrowserError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._write)
        self.log.close()

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
