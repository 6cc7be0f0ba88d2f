"""The web UI: server-rendered pages to sign up, sign in and out, and a profile.

Sessions are Flask-Login's, in Flask's signed cookie; the cookie names the
user's ``fs_uniquifier``, so a password change (which replaces it) ends every
other session. Every unsafe request to these pages must carry a CSRF token
(Flask-WTF's CSRFProtect, checked before the view runs). Sessions count only
on these pages: the JSON API never accepts a session cookie, so its bearer
tokens and API keys, which a browser never sends on its own, need none.
"""

from __future__ import annotations

from flask import Flask, request, session
from flask_login import current_user

from ..auth import Sessions, accept_sessions, users
from ..extensions import csrf, login_manager
from ..models import User
from .views import SIGN_IN_KEY, SessionUser, sign_in_page, web_bp

BLUEPRINT = "web"


def load_user(uniquifier: str) -> SessionUser | None:
    """The active user a session names, while its sign-in stands (not logged
    out, not ended by a password change, not expired)."""
    user = users.user_of_session(uniquifier, session.get(SIGN_IN_KEY))
    return None if user is None else SessionUser(user)


def on_pages() -> bool:
    """Whether this request is for the web UI, where only sessions count."""
    return request.blueprint == BLUEPRINT


def session_user() -> User | None:
    """The signed-in user of a web page's session (asked on the pages only)."""
    if not current_user.is_authenticated:
        return None
    signed_in: SessionUser = current_user._get_current_object()  # noqa: SLF001 - Flask-Login's proxy
    return signed_in.user


def init_app(app: Flask) -> None:
    # Flask-Login's own context processor loads the user for every template,
    # even an error page about the database; views.py offers a lazy one.
    login_manager.init_app(app, add_context_processor=False)
    login_manager.user_loader(load_user)
    login_manager.login_view = f"{BLUEPRINT}.login"
    # Sessions last as long as the browser: no remember-me cookie.
    login_manager.session_protection = "basic"
    # Checked where sessions count, these pages (views.py), not on the API.
    app.config.setdefault("WTF_CSRF_CHECK_DEFAULT", False)
    csrf.init_app(app)
    accept_sessions(app, Sessions(here=on_pages, user=session_user, start=sign_in_page))
    app.register_blueprint(web_bp)


__all__ = ["init_app", "web_bp"]
