"""The web UI's forms; Flask-WTF adds and checks each one's CSRF token."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import EmailField, PasswordField
from wtforms.validators import DataRequired, EqualTo, Length

from ..auth.passwords import MAX_LENGTH
from ..models.user import EMAIL_MAX_LENGTH

PASSWORD_LENGTH = Length(max=MAX_LENGTH)


class LoginForm(FlaskForm):
    email = EmailField(
        "E-mail address",
        validators=[DataRequired(), Length(max=EMAIL_MAX_LENGTH)],
        render_kw={"autocomplete": "username"},
    )
    password = PasswordField(
        "Password",
        validators=[DataRequired(), PASSWORD_LENGTH],
        render_kw={"autocomplete": "current-password"},
    )


class RegisterForm(FlaskForm):
    email = EmailField(
        "E-mail address",
        validators=[DataRequired(), Length(max=EMAIL_MAX_LENGTH)],
        render_kw={"autocomplete": "email"},
    )
    password = PasswordField(
        "Password",
        validators=[DataRequired(), PASSWORD_LENGTH],
        render_kw={"autocomplete": "new-password"},
    )
    confirm = PasswordField(
        "Repeat the password",
        validators=[DataRequired(), EqualTo("password", "The passwords differ.")],
        render_kw={"autocomplete": "new-password"},
    )


class PasswordChangeForm(FlaskForm):
    current_password = PasswordField(
        "Current password",
        validators=[DataRequired(), PASSWORD_LENGTH],
        render_kw={"autocomplete": "current-password"},
    )
    new_password = PasswordField(
        "New password",
        validators=[DataRequired(), PASSWORD_LENGTH],
        render_kw={"autocomplete": "new-password"},
    )
    confirm = PasswordField(
        "Repeat the new password",
        validators=[DataRequired(), EqualTo("new_password", "The passwords differ.")],
        render_kw={"autocomplete": "new-password"},
    )


class LogoutForm(FlaskForm):
    """No fields: signing out is a POST with a CSRF token, not a link."""


class RevokeKeyForm(FlaskForm):
    """No fields: the key is in the URL; the form carries the CSRF token."""
