"""The report in a real headless Chromium, opened from disk: it renders the attention widgets,
re-renders them from the <select> elements, logs no console error and requests nothing from the
network. Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: no
Python dependency, no chromedriver). Screenshots go to ``test-artifacts/`` at the repository root.

Needs Debian's ``chromium``: when ``/usr/bin/chromium`` is missing, a session fixture installs it
with apt-get (CI runs as root); a failed install fails the test, it never skips.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from icl_lens.reporting.report import build_report
from report_fixtures import make_results_dir, parse_html
from helpers import REPO

pytestmark = pytest.mark.browser

REPO_ROOT = REPO
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
WIDTH, HEIGHT = 1400, 1000
LOCAL_SCHEMES = ("file:", "data:", "about:", "blob:")


class CDPError(RuntimeError):
    """The browser did not answer, answered with an error, or a page condition timed out."""


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe.

    With ``--remote-debugging-pipe`` Chromium reads commands on fd 3 and writes answers and events
    on fd 4, one JSON message each, terminated by a NUL byte. A reader thread collects them; every
    event is kept so that console errors, exceptions and requests can be checked afterwards.
    """

    def __init__(self, binary: str, profile_dir: str, width: int = WIDTH, height: int = HEIGHT,
                 timeout: float = 60):
        self.timeout = timeout
        command_read, command_write = os.pipe()
        answer_read, answer_write = os.pipe()
        # out of the way of fds 3 and 4, and closed on exec: the child only keeps its dup2 copies
        child_read = fcntl.fcntl(command_read, fcntl.F_DUPFD_CLOEXEC, 10)
        child_write = fcntl.fcntl(answer_write, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(command_read)
        os.close(answer_write)

        def give_child_fds_3_and_4():
            os.dup2(child_read, 3)
            os.dup2(child_write, 4)

        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-default-apps", "--disable-extensions", "--no-first-run", "--no-default-browser-check",
                "--mute-audio", "--hide-scrollbars", f"--user-data-dir={profile_dir}",
                f"--window-size={width},{height}", "about:blank"]
        self.stderr_path = Path(profile_dir) / "chromium-stderr.log"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
                                     close_fds=False, preexec_fn=give_child_fds_3_and_4)
        os.close(child_read)
        os.close(child_write)
        self._commands = os.fdopen(command_write, "wb", buffering=0)
        self._answers = answer_read
        self._next_id = 0
        self._responses: dict[int, dict] = {}
        self._cond = threading.Condition()
        self._closed = False
        self.events: list[dict] = []
        self.session: str | None = None
        threading.Thread(target=self._read_loop, daemon=True).start()

    def _read_loop(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._answers, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._closed = True
                    self._cond.notify_all()
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                with self._cond:
                    if "id" in message:
                        self._responses[message["id"]] = message
                    else:
                        self.events.append(message)
                    self._cond.notify_all()

    def call(self, method: str, params: dict | None = None, session: bool = True,
             timeout: float | None = None) -> dict:
        with self._cond:
            self._next_id += 1
            message_id = self._next_id
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        self._commands.write(json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._cond:
            while message_id not in self._responses:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    raise CDPError(f"no answer to {method}: browser {'exited' if self._closed else 'timed out'} "
                                   f"(stderr: {self.stderr_path})")
                self._cond.wait(left)
            response = self._responses.pop(message_id)
        if "error" in response:
            raise CDPError(f"{method}: {response['error']}")
        return response.get("result", {})

    def open_page(self, width: int = WIDTH, height: int = HEIGHT) -> None:
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def _wait_event(self, method: str, since: int) -> dict:
        deadline = time.monotonic() + self.timeout
        with self._cond:
            while True:
                for event in self.events[since:]:
                    if event.get("method") == method:
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CDPError(f"no {method} event within {self.timeout} s")
                self._cond.wait(left)

    def navigate(self, url: str) -> None:
        mark = len(self.events)
        result = self.call("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CDPError(f"navigation to {url} failed: {result['errorText']}")
        self._wait_event("Page.loadEventFired", since=mark)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise CDPError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float | None = None) -> Any:
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise CDPError(f"timed out waiting for {expression!r} (last value {value!r})")
            time.sleep(0.2)

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries seen so far."""
        out = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                out.append(f"uncaught: {details.get('exception', {}).get('description') or details.get('text')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                args = " ".join(str(a.get("value", a.get("description"))) for a in params.get("args", []))
                out.append(f"console.{params['type']}: {args}")
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                out.append(f"log error: {params['entry'].get('text', '')} {params['entry'].get('url', '')}")
        return out

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def close(self) -> None:
        try:
            self.call("Browser.close", session=False, timeout=10)
        except CDPError:
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._commands.close()
        os.close(self._answers)
        self._stderr.close()


def _find_chromium() -> str | None:
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def chromium_binary() -> str:
    """Debian's chromium; installed with apt-get when missing. Failing to install fails the test."""
    found = _find_chromium()
    if found:
        return found
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium", "chromium-driver"]):
        try:
            proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.fail(f"chromium is missing and '{' '.join(command)}' could not run: {exc}", pytrace=False)
        if proc.returncode != 0:
            pytest.fail(f"chromium is missing and '{' '.join(command)}' failed (exit {proc.returncode}); install "
                        f"Debian's chromium package (needs root and apt sources):\n{proc.stderr[-2000:]}",
                        pytrace=False)
    found = _find_chromium()
    if not found:
        pytest.fail("apt-get installed chromium but no chromium executable was found", pytrace=False)
    return found


@pytest.fixture
def browser(chromium_binary, tmp_path):
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    b = Browser(chromium_binary, str(profile))
    try:
        b.open_page()
        yield b
    finally:
        b.close()


PANELS = "document.querySelectorAll('#attention-panels > .icl-panel')"
CANVASES = "document.querySelectorAll('#attention-panels canvas')"
RENDERED = "document.getElementById('attention-panels').getAttribute('data-rendered')"
# canvases with more than 100 pixels neither blank nor white: chart.js really drew the maps
PAINTED = """Array.from(document.querySelectorAll('#attention-panels canvas')).filter((c) => {
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && (d[i] < 250 || d[i + 1] < 250 || d[i + 2] < 250)) n++;
  return n > 100;
}).length"""


def _texts(browser: Browser, selector: str) -> list[str]:
    return browser.evaluate(f"Array.from({PANELS}).map((p) => p.querySelector({json.dumps(selector)}).textContent)")


def _select(browser: Browser, select_id: str, value: str) -> None:
    before = browser.evaluate(RENDERED)
    browser.evaluate(f"(() => {{ const s = document.getElementById({json.dumps(select_id)}); "
                     f"s.value = {json.dumps(value)}; s.dispatchEvent(new Event('change')); }})()")
    browser.wait_for(f"{RENDERED} !== {json.dumps(before)}")


def _wait_for_widgets(browser: Browser, n_canvases: int, timeout: float = 120) -> None:
    """Wait until circuitsvis created (and chart.js painted) the canvases, and the coloured tokens."""
    browser.wait_for(f"{CANVASES}.length >= {n_canvases} && document.querySelectorAll('.colored-tokens').length > 0",
                     timeout=timeout)
    browser.wait_for(f"({PAINTED}) >= {n_canvases}", timeout=timeout)


def _assert_clean(browser: Browser) -> None:
    problems = browser.problems()
    assert not problems, "console errors / uncaught exceptions:\n" + "\n".join(problems)
    external = [url for url in browser.requests() if not url.startswith(LOCAL_SCHEMES)]
    assert not external, f"the page made network requests: {external}"


def _scroll_to_attention(browser: Browser) -> None:
    browser.evaluate("document.getElementById('attention').scrollIntoView()")
    time.sleep(0.3)


def test_report_renders_offline_in_chromium(browser, tmp_path, tiny_gpt):
    results_dir = make_results_dir(tmp_path, tiny_gpt, n_maps=2)
    [report] = build_report(results_dir)
    static = parse_html(report.read_text())
    # the widgets do not exist in the file: only circuitsvis' JavaScript creates them
    assert not any(tag == "canvas" or "colored-tokens" in (attrs.get("class") or "") for tag, attrs in static.tags)
    data = json.loads(next(s["text"] for s in static.scripts if s["attrs"].get("id") == "icl-attention-data"))
    n_layers, n_heads = data["n_layers"], data["n_heads"]
    n_single = 2 * len(data["settings"]) - 1  # every setting, then every setting minus ZSL
    ARTIFACTS.mkdir(exist_ok=True)

    browser.navigate(report.as_uri())
    _wait_for_widgets(browser, n_single)
    assert browser.evaluate(f"{PANELS}.length") == n_single + 1  # + ICL's mass on the demonstrations
    assert browser.evaluate("document.querySelectorAll('img[src^=\"data:image/png\"]').length") >= 3
    assert browser.evaluate("Array.from(document.images).every((i) => i.complete && i.naturalWidth > 0)")
    assert [t.split(" ·")[0] for t in _texts(browser, "h3")] == [
        "ZSL", "ICL", "FT", "LCGD", "ICL − ZSL", "FT − ZSL", "LCGD − ZSL", "ICL attention on the demonstrations"]
    browser.screenshot(ARTIFACTS / "report_top.png")
    _scroll_to_attention(browser)
    browser.screenshot(ARTIFACTS / "report_attention_head.png")

    # the selects re-render the panels: all heads of the last layer, pre-softmax scores, example 1
    _select(browser, "sel-layer", str(n_layers - 1))
    _select(browser, "sel-kind", "scores")
    _select(browser, "sel-example", "1")
    _select(browser, "sel-head", "all")
    _wait_for_widgets(browser, n_single * (n_heads + 1))  # per panel: a thumbnail per head + the zoomed one
    assert browser.evaluate("document.body.innerText.split('Head Selector').length - 1") == n_single
    assert browser.evaluate("location.hash") == f"#example=1&layer={n_layers - 1}&head=all&kind=scores&scale=shared"
    assert browser.evaluate("document.getElementById('example-text').textContent") == data["examples"][1]["text"]
    _scroll_to_attention(browser)
    browser.screenshot(ARTIFACTS / "report_attention_all_heads.png")
    _assert_clean(browser)


def test_report_state_from_url_and_index(browser, tmp_path, tiny_gpt):
    results_dir = make_results_dir(tmp_path, tiny_gpt, n_maps=2)
    [report] = build_report(results_dir)
    browser.navigate(report.as_uri() + "#example=1&layer=1&head=2&kind=scores&scale=panel")
    _wait_for_widgets(browser, 7)
    state = browser.evaluate("['sel-example', 'sel-layer', 'sel-head', 'sel-kind', 'sel-scale']"
                             ".map((id) => document.getElementById(id).value)")
    assert state == ["1", "1", "2", "scores", "panel"]
    assert "head 2" in _texts(browser, "h3")[0]
    ranges = {note.rsplit("±", 1)[1] for note in _texts(browser, ".icl-note") if "difference" in note}
    assert len(ranges) > 1  # a colour scale per panel
    _select(browser, "sel-scale", "shared")
    ranges = {note.rsplit("±", 1)[1] for note in _texts(browser, ".icl-note") if "difference" in note}
    assert len(ranges) == 1
    _assert_clean(browser)

    index = (results_dir / "index.html").as_uri()
    browser.navigate(index)
    links = browser.evaluate("Array.from(document.querySelectorAll('a')).map((a) => a.href)")
    sections = [link for link in links if link.startswith(index + "#")]  # the dashboard's own navigation
    assert {link.split("#", 1)[1] for link in sections} >= {"findings"}
    assert [link for link in links if link not in sections] == [report.as_uri()]
    browser.navigate(report.as_uri())
    _wait_for_widgets(browser, 7)
    _assert_clean(browser)


def test_notebook_page_renders_offline(browser, tmp_path, tiny_gpt):
    """compare_settings(...).save(): the standalone page of the notebook API."""
    from icl_lens.viz import compare_settings, load_attention_maps

    results_dir = make_results_dir(tmp_path, tiny_gpt, n_maps=1)
    [cell] = [p for p in results_dir.iterdir() if p.is_dir()]
    maps, tokens, _ = load_attention_maps(cell)
    group = compare_settings(maps, tokens, layer=1, head=0, kind="scores")
    page = group.save(tmp_path / "compare.html")
    browser.navigate(page.as_uri())
    browser.wait_for(f"document.querySelectorAll('.icl-panel canvas').length >= {len(group)}")
    assert browser.evaluate("document.querySelectorAll('.icl-panel').length") == len(group) == 7
    _assert_clean(browser)
