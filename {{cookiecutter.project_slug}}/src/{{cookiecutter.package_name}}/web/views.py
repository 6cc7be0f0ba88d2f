"""The pages: home, register, log in and out, a profile with a password change."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_login import current_user, login_user, logout_user
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException, Unauthorized

from ..auth import attempts, authenticated, require, users
from ..database import handle_database_error
from ..extensions import csrf, db
from ..models import ApiKey, User
from ..resilience import enforce
from .forms import (
    LoginForm,
    LogoutForm,
    PasswordChangeForm,
    RegisterForm,
    RevokeKeyForm,
)

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


# The session's sign-in (a TokenFamily row): logging out revokes it, so a copy
# of the cookie made before is worth nothing after.
SIGN_IN_KEY = "sign_in"


def start_session(user: User) -> None:
    """Sign `user` in with a fresh session (nothing carries over from before)."""
    family = users.start_family(user)
    session.clear()
    session[SIGN_IN_KEY] = family.id
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
    try:
        # One mailbox, in its one spelling: what the limit counts.
        email = users.valid_email(form.email.data or "")
        attempts.limit_sign_up(email)
        user = users.create_user(email, form.password.data or "")
    except users.AccountError as refused:
        form[refused.field].errors = [str(refused)]
        return render_template("web/register.html", form=form), INVALID
    attempts.remember_device(user)
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
    attempts.limit_sign_in(email)
    user = users.check_password(email, form.password.data or "")
    if user is None:
        return render_template(
            "web/login.html", form=form, next=target, failure=BAD_CREDENTIALS
        ), INVALID
    attempts.remember_device(user)
    start_session(user)
    flash("You are signed in.", "success")
    return redirect(target or url_for(".profile"))


@web_bp.post("/logout")
def logout() -> ResponseReturnValue:
    form = LogoutForm()
    if form.validate_on_submit():
        sign_in = session.get(SIGN_IN_KEY)
        # The browser's session ends first, even if the database then fails.
        logout_user()
        session.clear()
        if isinstance(sign_in, str):
            users.revoke_family(sign_in)
        flash("You are signed out.", "success")
    return redirect(url_for(".login"))


def profile_page(user: User, form: PasswordChangeForm) -> str:
    """The profile: the account, its live API keys, the password form."""
    return render_template(
        "web/profile.html",
        user=user,
        form=form,
        api_keys=users.live_api_keys(user),
        revoke_form=RevokeKeyForm(),
    )


@web_bp.get("/profile")
@require()
def profile() -> str:
    return profile_page(authenticated().user, PasswordChangeForm())


@web_bp.post("/profile/api-keys/<int:key_id>/revoke")
@require()
def revoke_api_key(key_id: int) -> ResponseReturnValue:
    """Revoke one of the user's API keys (the CSRF check ran before the view)."""
    user = authenticated().user
    key = db.session.get(ApiKey, key_id) if key_id < 2**31 else None
    if key is None or key.user_id != user.id:
        abort(404, description=f"API key {key_id} does not exist.")
    users.revoke_api_key(key)
    flash(f"API key {key.name} ({key.prefix}) is revoked.", "success")
    return redirect(url_for(".profile"))


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
            form[refused.field].errors = [str(refused)]
        else:
            # This session goes on under the new uniquifier; all others end.
            start_session(user)
            flash(
                "Password changed. Your other sessions are signed out and your "
                "API keys revoked.",
                "success",
            )
            return redirect(url_for(".profile"))
    return profile_page(user, form), INVALID


@web_bp.context_processor
def navigation() -> dict[str, object]:
    # current_user is Flask-Login's proxy: the user is loaded if a page asks.
    return {"current_user": current_user, "logout_form": LogoutForm()}


@web_bp.after_request
def private(response: Response) -> Response:
    """Pages may show the account and carry a CSRF token: no cache keeps them."""
    if request.endpoint != "web.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@web_bp.errorhandler(HTTPException)
def error_page(error: HTTPException) -> ResponseReturnValue:
    """Errors of these pages as pages: 401 sends the visitor to the login."""
    if isinstance(error, Unauthorized):
        return redirect(url_for(".login", next=request.full_path.rstrip("?")))
    status = error.code or 500
    return page_for(status, error.name, error.description or "", error.get_headers())


@web_bp.errorhandler(SQLAlchemyError)
def database_error_page(error: SQLAlchemyError) -> ResponseReturnValue:
    """A database failure as a page: the status and Retry-After of database.py."""
    answer = handle_database_error(error)
    name = "Service Unavailable" if answer.status_code == 503 else "Server Error"
    detail = "The service is briefly unavailable; try again shortly."
    return page_for(answer.status_code, name, detail, list(answer.headers.items()))


def page_for(
    status: int, name: str, description: str, headers: list[tuple[str, str]]
) -> Response:
    """An error page that needs nothing that may have failed (no database, no
    session user): error.html stands alone."""
    response = Response(
        render_template(
            "web/error.html", name=name, description=description, status=status
        ),
        status=status,
    )
    for header, value in headers:
        if header.lower() != "content-type":
            response.headers[header] = value
    return response
