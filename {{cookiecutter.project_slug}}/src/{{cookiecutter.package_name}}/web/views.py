"""The pages: home, register, log in and out, a profile with a password change."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_login import login_user, logout_user
from werkzeug.exceptions import HTTPException, Unauthorized

from ..auth import authenticated, require, users
from ..extensions import csrf
from ..models import User
from ..resilience import enforce
from .forms import LoginForm, LogoutForm, PasswordChangeForm, RegisterForm

web_bp = Blueprint(
    "web",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/static/web",
)
# Failed submissions answer 422 with the form and its errors, so that tools
# (and tests) can tell them from a page that merely shows the form.
INVALID = 422
BAD_CREDENTIALS = "The e-mail address or the password is not correct."


@web_bp.before_request
def check_csrf() -> None:
    """Refuse an unsafe request without this session's CSRF token (400)."""
    csrf.protect()


def same_site(target: str | None) -> str | None:
    """`target` if it is a path on this site, else None (no open redirects).

    ``//evil.example`` and ``/\\evil.example`` are other sites to a browser,
    and so is anything with a scheme or a host.
    """
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return None
    if any(character < " " or character == "\\" for character in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    return target


@dataclass(frozen=True)
class SessionUser:
    """A user as Flask-Login sees one: the session names its ``fs_uniquifier``."""

    user: User
    is_authenticated: ClassVar[bool] = True
    is_anonymous: ClassVar[bool] = False

    @property
    def is_active(self) -> bool:
        return self.user.active

    @property
    def email(self) -> str:
        return self.user.email

    def get_id(self) -> str:
        return self.user.fs_uniquifier


def start_session(user: User) -> None:
    """Sign `user` in with a fresh session (nothing carries over from before)."""
    session.clear()
    login_user(SessionUser(user))


def sign_in_page(user: User) -> ResponseReturnValue:
    """Where a sign-in through an identity provider ends: signed in, the profile."""
    start_session(user)
    flash("You are signed in.", "success")
    return redirect(url_for("web.profile"))


@web_bp.get("/")
def index() -> str:
    return render_template("web/index.html")


@web_bp.route("/register", methods=["GET", "POST"])
def register() -> ResponseReturnValue:
    form = RegisterForm()
    if not form.validate_on_submit():
        return render_template("web/register.html", form=form), (
            INVALID if form.is_submitted() else 200
        )
    email = users.normalise_email(form.email.data or "")
    enforce("register")
    enforce("register", identity=f"account:{email}")
    try:
        user = users.create_user(email, form.password.data or "")
    except users.AccountError as refused:
        field = form.email if "e-mail" in str(refused) else form.password
        field.errors = [str(refused)]
        return render_template("web/register.html", form=form), INVALID
    start_session(user)
    flash("Welcome! Your account is ready.", "success")
    return redirect(url_for(".profile"))


@web_bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    form = LoginForm()
    target = same_site(request.args.get("next"))
    if not form.validate_on_submit():
        return render_template("web/login.html", form=form, next=target), (
            INVALID if form.is_submitted() else 200
        )
    email = users.normalise_email(form.email.data or "")
    enforce("login")
    enforce("login", identity=f"account:{email}")
    user = users.check_password(email, form.password.data or "")
    if user is None:
        return render_template(
            "web/login.html", form=form, next=target, failure=BAD_CREDENTIALS
        ), INVALID
    start_session(user)
    flash("You are signed in.", "success")
    return redirect(target or url_for(".profile"))


@web_bp.post("/logout")
def logout() -> ResponseReturnValue:
    form = LogoutForm()
    if form.validate_on_submit():
        logout_user()
        session.clear()
        flash("You are signed out.", "success")
    return redirect(url_for(".login"))


@web_bp.get("/profile")
@require()
def profile() -> str:
    return render_template(
        "web/profile.html", user=authenticated().user, form=PasswordChangeForm()
    )


@web_bp.post("/profile/password")
@require()
def change_password() -> ResponseReturnValue:
    user = authenticated().user
    form = PasswordChangeForm()
    if form.validate_on_submit():
        enforce("login")
        try:
            users.change_password(
                user, form.current_password.data or "", form.new_password.data or ""
            )
        except users.AccountError as refused:
            field = (
                form.current_password
                if "current" in str(refused)
                else form.new_password
            )
            field.errors = [str(refused)]
        else:
            # This session goes on under the new uniquifier; all others end.
            start_session(user)
            flash("Password changed. Your other sessions are signed out.", "success")
            return redirect(url_for(".profile"))
    return render_template("web/profile.html", user=user, form=form), INVALID


@web_bp.context_processor
def navigation() -> dict[str, object]:
    return {"logout_form": LogoutForm()}


@web_bp.errorhandler(HTTPException)
def error_page(error: HTTPException) -> ResponseReturnValue:
    """Errors of these pages as pages: 401 sends the visitor to the login."""
    if isinstance(error, Unauthorized):
        return redirect(url_for(".login", next=request.full_path.rstrip("?")))
    status = error.code or 500
    response = Response(
        render_template("web/error.html", error=error, status=status), status=status
    )
    for name, value in error.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response
