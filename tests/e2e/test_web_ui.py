"""The web page at ``/ui/`` in a real browser: Debian's chromium driven by Playwright.

We never run ``playwright install``: the browser is the distribution's ``/usr/bin/chromium``
(``scripts/ensure_browser.sh``, run by ``make test``, installs it). Without it these tests
skip, except under ``CI=true`` where they fail: CI must not go green without them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from tests.procs import ROOT, Proc, free_port, inferq_env, wait_until, workers_online

try:
    from playwright.sync_api import (
        Browser,
        BrowserContext,
        Page,
        Route,
        expect,
        sync_playwright,
    )
except ImportError:  # the browser fixture skips (or fails, in CI) and says why
    sync_playwright = None

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
DIGITS = ROOT / "tests" / "data" / "digits"
#: The page must work with no inline script or style and nothing from elsewhere.
STRICT_CSP = "default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
#: Long enough for a cold worker's first batch; a warm one answers in well under a second.
RESULT_TIMEOUT_MS = 30_000

#: Strokes as fractions of the pad (x, y from its top left). Checked against the bundled
#: model: each is read with a probability above 0.99.
ONE = [[(0.54, 0.15), (0.47, 0.85)]]
SEVEN = [[(0.25, 0.2), (0.75, 0.2)], [(0.75, 0.21), (0.45, 0.85)]]


def _unavailable(reason: str) -> None:
    hint = f"{reason}; `make test` installs it (scripts/ensure_browser.sh)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: the browser tests must run: {hint}")
    pytest.skip(hint)


@dataclass
class Served:
    url: str
    proc: Proc
    key: str | None = None


def _serve(tmp: Path, **env: str) -> tuple[str, Proc, dict[str, str]]:
    port = free_port()
    full_env = inferq_env(INFERQ_HOME=str(tmp / "home"), INFERQ_PORT=str(port),
                          INFERQ_RESULT_URL=f"sqlite:///{tmp / 'home' / 'jobs.sqlite'}", **env)
    return f"http://127.0.0.1:{port}", Proc(["serve", "--models", "mnist"], full_env,
                                            tmp / "serve.log"), full_env


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``inferq serve`` as ``make serve`` runs it: open on 127.0.0.1."""
    url, proc, _ = _serve(tmp_path_factory.mktemp("ui-open"))
    try:
        wait_until(lambda: workers_online(url, "mnist") >= 1, 120, "inferq serve ready", [proc])
        yield Served(url, proc)
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def served_with_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``inferq serve`` with API keys on (serve turns them off on loopback unless
    ``INFERQ_AUTH`` is set), and a key made in the same store."""
    tmp = tmp_path_factory.mktemp("ui-auth")
    url, proc, env = _serve(tmp, INFERQ_AUTH="on")
    try:
        out = subprocess.run([sys.executable, "-m", "inferq", "keys", "create", "--name", "ui"],
                             env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
                             check=True)
        key = out.stdout.strip().splitlines()[-1]
        headers = {"Authorization": f"Bearer {key}"}

        def ready() -> bool:
            r = httpx.get(f"{url}/v1/models/mnist", headers=headers, timeout=5)
            return r.status_code == 200 and r.json()["workers_online"] >= 1

        wait_until(ready, 120, "inferq serve (auth on) ready", [proc])
        yield Served(url, proc, key)
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing")
    if sync_playwright is None:
        _unavailable("the playwright package is missing (pip install -e '.[dev]')")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _with_csp(route: Route) -> None:
    response = route.fetch()
    route.fulfill(response=response, headers={**response.headers,
                                              "content-security-policy": STRICT_CSP})


@contextlib.contextmanager
def _open(context: BrowserContext, url: str, shot: Path) -> Iterator[Page]:
    """A page on ``url``/ui/, served under a strict CSP, that fails the test on a script
    error or a CSP violation, and leaves a screenshot."""
    context.route(f"{url}/ui/", _with_csp)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text)
            if "Content Security Policy" in msg.text else None)
    page.goto(f"{url}/ui/")
    try:
        yield page
    finally:
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")
        context.close()
    assert not errors, f"script errors or CSP violations on the page: {errors}"


@pytest.fixture
def page(browser: Browser, served: Served, tmp_path: Path) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    with _open(context, served.url, tmp_path / "page.png") as p:
        yield p


def _draw(page: Page, strokes: list[list[tuple[float, float]]]) -> None:
    """Draw with the mouse: each stroke is a press, moves through its points, a release."""
    box = page.locator("#pad").bounding_box()
    assert box is not None

    def at(p: tuple[float, float]) -> tuple[float, float]:
        return box["x"] + p[0] * box["width"], box["y"] + p[1] * box["height"]

    for stroke in strokes:
        page.mouse.move(*at(stroke[0]))
        page.mouse.down()
        for point in stroke[1:]:
            page.mouse.move(*at(point), steps=15)
        page.mouse.up()


def test_a_drawn_one_is_recognised_when_the_pen_lifts(page: Page) -> None:
    assert page.locator("#auto").is_checked()
    _draw(page, ONE)  # no click: recognising on lift is the default
    expect(page.locator("#digit")).to_have_text("1", timeout=RESULT_TIMEOUT_MS)
    # SSE shows the transitions as they happen, ending in the terminal state.
    expect(page.locator("#draw-steps li").last).to_contain_text("succeeded")
    expect(page.locator("#bars .bar")).to_have_count(10)
    expect(page.locator("#bars .bar.best")).to_contain_text("1")


def test_a_drawn_seven_in_two_strokes_is_recognised_on_click(page: Page) -> None:
    page.uncheck("#auto")
    _draw(page, SEVEN)
    page.click("#recognise")
    expect(page.locator("#digit")).to_have_text("7", timeout=RESULT_TIMEOUT_MS)
    steps = page.locator("#draw-steps li").all_text_contents()
    assert steps[-1].startswith("succeeded"), steps
    # Clear empties the pad and the result; recognising nothing is refused in the page.
    page.click("#clear")
    expect(page.locator("#digit")).to_have_text("–")
    page.click("#recognise")
    expect(page.locator("#draw-error")).to_contain_text("Nothing drawn")


def test_an_uploaded_three_shows_its_output_as_json(page: Page) -> None:
    expect(page.locator("#model")).to_have_value("mnist")
    page.set_input_files("#f-image", str(DIGITS / "drawn_3.png"))
    page.click("#submit-job")
    expect(page.locator("#output")).to_contain_text('"digit": 3', timeout=RESULT_TIMEOUT_MS)
    expect(page.locator("#upload-steps li").last).to_contain_text("succeeded")
    # The job is listed among the recent ones (refreshed when it ends, and by the button).
    page.click("#refresh")
    expect(page.locator("#jobs li").first).to_contain_text("digit 3")


def test_a_submit_without_the_image_shows_the_problem_and_its_field(page: Page) -> None:
    expect(page.locator("#model")).to_have_value("mnist")
    page.click("#submit-job")
    error = page.locator("#upload-error")
    expect(error).to_contain_text("Invalid input")
    expect(error).to_contain_text("input.image")


def test_a_finger_draws_on_a_phone_sized_page(browser: Browser, served: Served,
                                              tmp_path: Path) -> None:
    context = browser.new_context(viewport={"width": 320, "height": 640}, has_touch=True,
                                  is_mobile=True, device_scale_factor=2)
    with _open(context, served.url, tmp_path / "phone.png") as page:
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 320, "the page scrolls sideways at phone width"
        box = page.locator("#pad").bounding_box()
        assert box is not None and box["width"] < 280  # shown smaller, drawn scaled
        # Real touch events (not mouse) through the DevTools protocol.
        cdp = context.new_cdp_session(page)
        (x0, y0), (x1, y1) = ((box["x"] + p[0] * box["width"], box["y"] + p[1] * box["height"])
                              for p in ONE[0])
        cdp.send("Input.dispatchTouchEvent",
                 {"type": "touchStart", "touchPoints": [{"x": x0, "y": y0}]})
        for i in range(1, 16):
            cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [
                {"x": x0 + (x1 - x0) * i / 15, "y": y0 + (y1 - y0) * i / 15}]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        expect(page.locator("#digit")).to_have_text("1", timeout=RESULT_TIMEOUT_MS)


def test_with_api_keys_on_the_page_asks_for_a_key_then_works(
        browser: Browser, served_with_auth: Served, tmp_path: Path) -> None:
    assert served_with_auth.key is not None
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    with _open(context, served_with_auth.url, tmp_path / "auth.png") as page:
        login = page.locator("#login")
        expect(login).to_be_visible()
        expect(page.locator("#login-error")).to_be_hidden()  # no key yet is not an error
        # A wrong key is refused, readably, and the form stays.
        page.fill("#api-key", "iq_not-a-key")
        page.click("#login-form button[type=submit]")
        expect(page.locator("#login-error")).to_contain_text("unknown or revoked")
        expect(login).to_be_visible()

        page.fill("#api-key", served_with_auth.key)
        page.click("#login-form button[type=submit]")
        expect(login).to_be_hidden()
        expect(page.locator("#model")).to_have_value("mnist")  # what 401'd is loaded again
        expect(page.locator("#signout")).to_be_visible()

        # EventSource cannot send the key: the page long-polls with it instead.
        _draw(page, ONE)
        expect(page.locator("#digit")).to_have_text("1", timeout=RESULT_TIMEOUT_MS)
        page.set_input_files("#f-image", str(DIGITS / "drawn_3.png"))
        page.click("#submit-job")
        expect(page.locator("#output")).to_contain_text('"digit": 3',
                                                        timeout=RESULT_TIMEOUT_MS)
        expect(page.locator("#jobs li").first).to_contain_text("mnist")
        assert page.evaluate("sessionStorage.getItem('inferq.apiKey')") == served_with_auth.key

        # Signing out forgets the key and asks again.
        page.click("#signout")
        expect(login).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('inferq.apiKey')") is None
