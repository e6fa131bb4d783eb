"""A real headless Chromium (Debian's ``chromium`` and ``chromedriver``, driven by Selenium) against the
session's stack, for the admin console.

``console`` signs a browser in: with a one-time link (the bootstrap admin) or through the test OpenID
Connect provider (:data:`tests.e2e.oidc.harness.ACCOUNTS`). ``axe`` runs axe-core (bundled by
``selenium-axe-python``) in the page; WebDriver evaluates it outside the page's CSP, which forbids every
script. ``shot`` saves a screenshot: into ``docs/console/`` when ``KEYWARD_SCREENSHOTS`` is set, else
into the test's temporary directory (so every run still takes them).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.expected_conditions import staleness_of
from selenium.webdriver.support.ui import WebDriverWait

from tests.e2e.conftest import Gateway
from tests.e2e.oidc.harness import ACCOUNTS, Account, OidcProvider, node_problem

ROOT = Path(__file__).resolve().parents[3]
CHROMIUM = Path(os.environ.get("KEYWARD_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("KEYWARD_CHROMEDRIVER", "/usr/bin/chromedriver"))
AXE = Path(__import__("selenium_axe_python").__file__).parent / "axe-core" / "axe.min.js"


def browser_problem() -> str | None:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        return (f"{', '.join(missing)} not found: install Debian's chromium and chromium-driver "
                "(`make test` does, as root, with apt-get)")
    return None


class Browser:
    """One Chromium window with its own cookies, pointed at the control plane."""

    def __init__(self, driver: WebDriver, base: str) -> None:
        self.driver = driver
        self.base = base

    def open(self, path: str) -> Browser:
        self.driver.get(self.base + path if path.startswith("/") else path)
        return self

    @property
    def path(self) -> str:
        url: str = self.driver.current_url
        return url[len(self.base):] if url.startswith(self.base) else url

    @property
    def text(self) -> str:
        return self.driver.find_element(By.TAG_NAME, "body").text

    @property
    def title(self) -> str:
        return str(self.driver.title)

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str) -> list[WebElement]:
        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def fill(self, css: str, value: str) -> None:
        element = self.find(css)
        if element.tag_name == "select":
            from selenium.webdriver.support.select import Select

            Select(element).select_by_value(value)
            return
        element.clear()
        element.send_keys(value)

    def click(self, css: str) -> None:
        self.find(css).click()

    def submit_and_wait(self, css: str, timeout: float = 15) -> None:
        """Click a link or a form's button and wait until the next page has replaced this one."""
        page = self.find("html")
        self.click(css)
        try:
            # While the old page is torn down, chromedriver may answer "node does not belong to the document".
            WebDriverWait(self.driver, timeout, ignored_exceptions=(WebDriverException,)).until(staleness_of(page))
        except TimeoutException as exc:
            raise AssertionError(f"clicking {css} at {self.path} led nowhere") from exc

    def wait_for(self, condition: Callable[[Browser], Any], timeout: float = 10, what: str = "page") -> None:
        try:
            WebDriverWait(self.driver, timeout).until(lambda _driver: condition(self))
        except TimeoutException as exc:
            raise AssertionError(f"timed out waiting for {what}; at {self.path}: {self.text[:500]}") from exc

    def cookie(self, name: str) -> dict | None:
        return self.driver.get_cookie(name)

    def http(self, **headers: str) -> httpx.Client:
        """An HTTP client holding this browser's console session (downloads, replayed or forged forms)."""
        session = self.cookie("keyward_session")
        assert session is not None, "this browser is not signed in"
        client = httpx.Client(base_url=self.base, headers=headers, timeout=60, follow_redirects=False)
        client.cookies.set("keyward_session", session["value"])
        return client

    @property
    def csrf(self) -> str:
        """The page's CSRF token (every signed-in page has the sign-out form)."""
        return str(self.find("form[action='/console/sign-out'] input[name=csrf]").get_attribute("value"))

    def axe(self) -> list[dict]:
        """axe-core's violations on this page (WCAG 2.1 A and AA rules)."""
        self.driver.execute_script(AXE.read_text())
        result = self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})"
            ".then(r => done(r.violations)).catch(e => done([{id: 'axe-error', help: String(e), nodes: []}]));")
        return list(result)


def _driver() -> WebDriver:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1360,1000", "--disable-extensions", "--no-first-run",
                     "--password-store=basic", "--disable-features=Translate"):
        options.add_argument(argument)
    service = Service(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    return driver


@pytest.fixture
def browsers(gateway: Gateway) -> Iterator[Callable[[], Browser]]:
    """Open as many independent browsers as a test needs; all are closed after it."""
    problem = browser_problem()
    if problem:
        pytest.fail(problem)
    opened: list[WebDriver] = []

    def new() -> Browser:
        driver = _driver()
        opened.append(driver)
        return Browser(driver, gateway.info.api_url)

    yield new
    for driver in opened:
        driver.quit()


#: The teams ``as_role("owner")`` made the test IdP's owner account the owner of (one at a time).
_OWNED_BY_OTTO: set[str] = set()


class Console:
    """Signs browsers in to the console."""

    def __init__(self, gateway: Gateway, browsers: Callable[[], Browser], idp: OidcProvider | None) -> None:
        self.gateway = gateway
        self.browsers = browsers
        self.idp = idp

    def link(self) -> str:
        reply = self.gateway.admin.post("/console/links")
        assert reply.status_code == 201, reply.text
        return self.gateway.info.api_url + reply.json()["path"]

    def as_bootstrap(self, path: str = "/console") -> Browser:
        browser = self.browsers()
        browser.open(self.link())
        browser.wait_for(lambda b: b.path == "/console", what="the overview after the sign-in link")
        if path != "/console":
            browser.open(path)
        return browser

    def person(self, account: Account) -> dict:
        """The Keyward user of an IdP account (created on first use)."""
        found = self.gateway.admin.get("/users", params={"email": account.email}).json()["items"]
        return found[0] if found else self.gateway.user(email=account.email)

    def as_role(self, role: str, path: str = "/console", team: dict | None = None) -> Browser:
        """A browser signed in through OIDC as the test IdP's auditor (``audrey``), finance analyst
        (``fiona``), admin (``adele``) or, for ``owner``, ``otto`` made owner of ``team``."""
        handle = {"auditor": "audrey", "finance": "fiona", "admin": "adele", "owner": "otto"}[role]
        account = ACCOUNTS[handle]
        person = self.person(account)
        if role == "owner":
            assert team is not None, "a team owner needs the team they own"
            # The console works on the first team (by name) a person owns: own this one only.
            for other in _OWNED_BY_OTTO - {team["id"]}:
                self.gateway.admin.put(f"/teams/{other}/members/{person['id']}", json={"role": "member"})
            _OWNED_BY_OTTO.clear()
            _OWNED_BY_OTTO.add(team["id"])
            self.gateway.join(person, team, role="owner")
        browser = self.through_oidc(account, path)
        browser.wait_for(lambda b: b.find("[data-role]").text == role, what=f"the console as {role}")
        return browser

    def through_oidc(self, account: Account, path: str = "/console", browser: Browser | None = None) -> Browser:
        """Sign in at the test provider as ``account`` (its login form, then consent) and land on ``path``."""
        if self.idp is None:
            pytest.fail(f"OIDC sign-in is required and cannot be tested here: {node_problem()}")
        browser = browser or self.browsers()
        browser.open(path)
        if browser.path.startswith("/console/sign-in"):
            browser.submit_and_wait("a[href^='/auth/login']")
        for _ in range(4):
            if not browser.driver.current_url.startswith(self.idp.issuer):
                break
            if browser.all("input[name=email]"):
                browser.fill("input[name=email]", account.email)
                browser.fill("input[name=password]", account.password)
            browser.submit_and_wait("form[method=post] [type=submit]")
        browser.wait_for(lambda b: b.driver.current_url.startswith(b.base), what="the way back from the provider")
        return browser


@pytest.fixture
def console(gateway: Gateway, browsers: Callable[[], Browser], oidc_provider: OidcProvider | None) -> Console:
    return Console(gateway, browsers, oidc_provider)


@pytest.fixture
def shot(tmp_path: Path) -> Callable[[Browser, str], Path]:
    wanted = os.environ.get("KEYWARD_SCREENSHOTS")
    folder = ROOT / "docs" / "console" if wanted else tmp_path

    def take(browser: Browser, name: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.png"
        # The whole page, not the window: the viewport is stretched to the document's height for the shot.
        height = int(browser.driver.execute_script("return Math.min(document.documentElement.scrollHeight, 3000)"))
        browser.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": 1360, "height": max(height, 700), "deviceScaleFactor": 1, "mobile": False})
        try:
            browser.driver.save_screenshot(str(path))
        finally:
            browser.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        assert path.stat().st_size > 5000, f"the screenshot {path} is empty"
        return path

    return take


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def console_form_fields(browser: Browser, form_css: str) -> dict[str, str]:
    """The named fields of a form on the page (to replay it from another client)."""
    form = browser.find(form_css)
    return {field.get_attribute("name"): field.get_attribute("value") or ""
            for field in form.find_elements(By.CSS_SELECTOR, "input[name]")}


__all__ = ["Browser", "Console", "console_form_fields", "unique"]
