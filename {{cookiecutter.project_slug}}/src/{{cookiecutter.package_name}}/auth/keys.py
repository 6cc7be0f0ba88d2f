"""The RSA key pair that signs and verifies tokens.

JWT_PRIVATE_KEY (PEM text) or JWT_PRIVATE_KEY_FILE (a path) sets it; the
public key is derived from it. Production refuses to start without one
(config.py). Elsewhere a key is made on first use: in development it is kept
in the instance folder (untracked, mode 600), so tokens outlive a restart; the
test suite keeps one per process in memory.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask

from ..config import rsa_signing_key

KEY_BITS = 3072
DEVELOPMENT_KEY_FILE = "jwt-private-key.pem"


@dataclass(frozen=True)
class SigningKeys:
    """The private key (signing), the public key (verifying) and its key id."""

    private: rsa.RSAPrivateKey
    public: rsa.RSAPublicKey
    kid: str


def thumbprint(public: rsa.RSAPublicKey) -> str:
    """The key's RFC 7638 JWK thumbprint: its ``kid`` in token headers."""
    numbers = public.public_numbers()

    def b64(number: int) -> str:
        raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    members = {"e": b64(numbers.e), "kty": "RSA", "n": b64(numbers.n)}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def load_private_key(pem: bytes, source: str) -> SigningKeys:
    """The key pair of `pem`, an unencrypted PEM RSA key of 2048 bits or more."""
    private = rsa_signing_key(pem, source)
    public = private.public_key()
    return SigningKeys(private, public, thumbprint(public))


@functools.cache
def process_key() -> SigningKeys:
    """A key for this process only (the test suite's)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return SigningKeys(private, private.public_key(), thumbprint(private.public_key()))


def development_key(instance: Path) -> SigningKeys:
    """The instance folder's key, made on first use."""
    path = instance / DEVELOPMENT_KEY_FILE
    if not path.exists():
        private = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        instance.mkdir(parents=True, exist_ok=True)
        # Created private (0600) and never overwritten: O_EXCL loses a race
        # against another process making it, and then reads that one's.
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(descriptor, "wb") as file:
                file.write(pem)
    return load_private_key(path.read_bytes(), str(path))


def signing_keys(app: Flask) -> SigningKeys:
    """The app's keys: configured, else made for development or tests."""
    configured: str | None = app.config["JWT_PRIVATE_KEY"]
    if configured:
        return load_private_key(configured.encode(), app.config["JWT_KEY_SOURCE"])
    if app.testing:
        return process_key()
    return development_key(Path(app.instance_path))
