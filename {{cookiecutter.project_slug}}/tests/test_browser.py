"""The web UI in a real browser: the system's Chromium, headless, driven by Playwright.

Playwright downloads no browser here: it drives the Chromium the system has
(Debian: ``apt-get install chromium``; elsewhere set CHROMIUM to its path).
A screenshot of each page goes to test-artifacts/browser/ (BROWSER_ARTIFACTS).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright
from werkzeug.serving import make_server

from conftest import PROJECT, AppFactory

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Without these, a headless Chromium in a container keeps dialling out.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(
    os.environ.get("BROWSER_ARTIFACTS", PROJECT / "test-artifacts" / "browser")
)
EMAIL = "browser@example.com"
PASSWORD = "first-pass-phrase-19"
NEW_PASSWORD = "second-pass-phrase-23"

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(),
    reason=f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)",
)


@pytest.fixture
def live_server(make_app: AppFactory, tmp_path: Path) -> Iterator[str]:
    """The app on a real HTTP server on 127.0.0.1, in a thread of this process."""
    overrides = {}
    if not os.environ.get("TEST_DATABASE_URL"):
        # One database for every thread of the server.
        overrides["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'browser.db'}"
    app = make_app(tables=True, **overrides)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@pytest.fixture
def page() -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(10_000)
            yield page
        finally:
            browser.close()


def shoot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


def log_in(page: Page, password: str) -> None:
    page.get_by_label("E-mail address").fill(EMAIL)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Log in").click()


def log_out(page: Page, base: str) -> None:
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(f"{base}/login")
    expect(page.get_by_role("status")).to_contain_text("You are signed out.")


def test_an_account_from_sign_up_to_password_change(
    page: Page, live_server: str
) -> None:
    base = live_server
    page.goto(f"{base}/register")
    expect(page.get_by_role("heading", name="Create an account")).to_be_visible()
    shoot(page, "1-register")
    page.get_by_label("E-mail address").fill(EMAIL)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Repeat the password").fill(PASSWORD)
    page.get_by_role("button", name="Register").click()
    expect(page).to_have_url(f"{base}/profile")
    expect(page.get_by_role("status")).to_contain_text("Your account is ready")
    shoot(page, "2-profile-after-sign-up")

    log_out(page, base)
    shoot(page, "3-login-after-logout")
    log_in(page, "not my password at all")
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("The e-mail address or the password is not correct.")
    shoot(page, "4-login-failed")

    log_in(page, PASSWORD)
    expect(page).to_have_url(f"{base}/profile")
    expect(page.get_by_role("heading", name="Your profile")).to_be_visible()
    expect(page.get_by_text(EMAIL, exact=True)).to_be_visible()
    shoot(page, "5-profile")

    page.get_by_label("Current password").fill(PASSWORD)
    page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    page.get_by_label("Repeat the new password").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Change the password").click()
    expect(page.get_by_role("status")).to_contain_text("Password changed")
    shoot(page, "6-password-changed")

    log_out(page, base)
    log_in(page, NEW_PASSWORD)
    expect(page).to_have_url(f"{base}/profile")
    log_out(page, base)
    shoot(page, "7-logged-out")


def test_the_keyboard_reaches_the_form_in_order(page: Page, live_server: str) -> None:
    page.goto(f"{live_server}/login")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to the content")).to_be_focused()
    page.get_by_label("E-mail address").focus()
    page.keyboard.press("Tab")
    expect(page.get_by_label("Password", exact=True)).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Log in")).to_be_focused()


def test_a_failed_field_says_why_to_assistive_technology(
    page: Page, live_server: str
) -> None:
    page.goto(f"{live_server}/register")
    page.get_by_label("E-mail address").fill(EMAIL)
    page.get_by_label("Password", exact=True).fill("password1234")
    page.get_by_label("Repeat the password").fill("password1234")
    page.get_by_role("button", name="Register").click()
    field = page.get_by_label("Password", exact=True)
    expect(field).to_have_attribute("aria-invalid", "true")
    expect(field).to_have_accessible_description(
        "At least 12 characters, and not a common password. The password is too "
        "common; choose one that is not on lists of leaked passwords."
    )
    shoot(page, "8-register-refused")
