"""Debian root filesystems made with debootstrap, for what the host lacks.

Debian ships CPython 3.13 (trixie) and 3.14 (forky); the host has 3.11 to 3.13
from pyenv. A root filesystem of forky is the chroot the generated suites run
in on 3.14 (tests/pythons.py), and root filesystems are the base images the
container tests import (tests/containers.py), since no registry is reachable.

Each root filesystem is made once per machine and kept under KILN_CACHE
(default ~/.cache/kiln), keyed by its suite and packages; a lock file lets
pytest-xdist workers share it, and an unfinished one is never used.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

CACHE = Path(os.environ.get("KILN_CACHE", Path.home() / ".cache" / "kiln"))
# Debian suites by what the tests need of them, and the debootstrap script that
# knows each (forky is too new for the host's debootstrap: sid's script works).
SCRIPTS = {
    "trixie": "/usr/share/debootstrap/scripts/trixie",
    "forky": "/usr/share/debootstrap/scripts/sid",
}
# The host's CA bundle: where the host trusts extra certificates (a proxy of
# the package index), the chroots must too. Never copied into anything shipped.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DONE = ".kiln-complete"
BUILD_TIMEOUT = 1200


def mirror() -> str:
    """The Debian mirror: KILN_DEBIAN_MIRROR, else the one apt already uses."""
    given = os.environ.get("KILN_DEBIAN_MIRROR")
    if given:
        return given
    apt = Path("/etc/apt")
    sources = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*"))]
    for source in sources:
        if not source.is_file():
            continue
        text = source.read_text(encoding="utf-8", errors="replace")
        for match in re.finditer(r"(?:URIs:|^deb)\s+(\S+)", text, re.MULTILINE):
            url = match.group(1)
            if url.startswith("http") and url.rstrip("/").endswith("/debian"):
                return url
    return "http://deb.debian.org/debian"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (made if missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def rootfs(suite: str, packages: Sequence[str]) -> Path:
    """A minimal `suite` root filesystem with `packages`, made once and kept."""
    if shutil.which("debootstrap") is None:
        raise RuntimeError(
            "debootstrap is not installed (apt-get install debootstrap): "
            f"it makes the Debian {suite} root filesystem the tests need"
        )
    wanted = sorted(set(packages))
    key = hashlib.sha256(" ".join([suite, *wanted]).encode()).hexdigest()[:12]
    target = CACHE / "rootfs" / f"{suite}-{key}"
    with locked(target.with_name(target.name + ".lock")):
        if (target / DONE).is_file():
            return target
        partial = target.with_name(target.name + ".partial")
        if partial.exists():
            shutil.rmtree(partial)
        command = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(wanted)}",
            suite,
            str(partial),
            mirror(),
            SCRIPTS[suite],
        ]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            log = partial / "debootstrap" / "debootstrap.log"
            detail = log.read_text(errors="replace")[-3000:] if log.is_file() else ""
            raise RuntimeError(
                f"{' '.join(command)} exited {result.returncode}\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}\n{detail}"
            )
        if HOST_CA_BUNDLE.is_file():
            shutil.copyfile(
                HOST_CA_BUNDLE, partial / "etc/ssl/certs/ca-certificates.crt"
            )
        (partial / DONE).write_text(" ".join([suite, *wanted]) + "\n")
        if target.exists():
            shutil.rmtree(target)
        partial.rename(target)
    return target
