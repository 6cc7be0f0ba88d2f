"""The Pythons the template offers, and the interpreter each runs on here.

Every offered Python runs generated suites in the template's tests: each answer
set on its own `python_version`, and the default set on all of them
(tests/test_pythons.py). The interpreter for a version is, in this order:

1. `KILN_PYTHON_<major>_<minor>` (KILN_PYTHON_3_12=/usr/bin/python3.12), which
   must then be that version;
2. pyenv's newest `<major.minor>.<patch>` under `$PYENV_ROOT/versions/`;
3. `python<major.minor>` on PATH;
4. for a version Debian ships (3.13 in trixie, 3.14 in forky), Debian's own, in a
   chroot of a root filesystem tests/rootfs.py makes once per machine with what
   the generated suites use (Chromium, redis-server, openssl, wrk, nginx, git): the
   commands of that bake then run inside it.

A version found nowhere fails the test that needs it, saying how to get it,
never skips it. `python tests/pythons.py` finds every offered version (making
the chroot if one is needed) and says where each runs; .ci/run calls it first.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from rootfs import rootfs

TEMPLATE = Path(__file__).resolve().parent.parent
_CHOICES = json.loads((TEMPLATE / "cookiecutter.json").read_text(encoding="utf-8"))
# The template's default first, as cookiecutter.json lists them.
OFFERED: tuple[str, ...] = tuple(_CHOICES["python_version"])
DEFAULT = OFFERED[0]

# Debian suites that ship an offered Python as their python3.
DEBIAN_SUITES = {"3.13": "trixie", "3.14": "forky"}
# What the generated suites run besides Python: Playwright drives the system's
# Chromium, tests start their own redis-server, make signing keys with openssl,
# drive Gunicorn with wrk and put nginx in front of it; procps for ps and kill.
CHROOT_PACKAGES = (
    "ca-certificates",
    "chromium",
    # dconf-service (for Chromium's GTK) needs a session bus, an alternative
    # debootstrap does not choose by itself.
    "dbus-x11",
    "git",
    "nginx",
    "openssl",
    "procps",
    "redis-server",
    "wrk",
)
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Run by unshare in a mount namespace of its own: every mount made here
# vanishes with the last process of the command, whatever the outcome. Host
# directories named after the first four arguments are bound at their own
# paths, so the paths of a bake's venv are the same inside and out.
CHROOT_SCRIPT = r"""
set -eu
root=$1 workdir=$2 uv=$3 shared=$4
shift 4
mount --rbind /proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs "$root/dev/shm"
for file in /etc/resolv.conf /etc/hosts; do
    if [ -f "$file" ]; then
        [ -e "$root$file" ] || : > "$root$file"
        mount --bind "$file" "$root$file"
    fi
done
[ -e "$root/usr/local/bin/uv" ] || : > "$root/usr/local/bin/uv"
mount --bind "$uv" "$root/usr/local/bin/uv"
old_ifs=$IFS
IFS=:
for directory in $shared; do
    mkdir -p "$root$directory"
    mount --rbind "$directory" "$root$directory"
done
IFS=$old_ifs
exec chroot "$root" /usr/bin/env --chdir="$workdir" "$@"
"""


class MissingPython(RuntimeError):
    """An offered Python that is nowhere on this machine."""


@dataclass(frozen=True)
class Python:
    """One offered version, and how commands run on it here."""

    version: str
    # The interpreter as the commands see it (inside `root` for a chroot).
    executable: str
    # A Debian root filesystem the commands run in, or None for the host.
    root: Path | None = None

    def __str__(self) -> str:
        if self.root is None:
            return f"Python {self.version}: {self.executable}"
        return f"Python {self.version}: {self.executable} in the chroot {self.root}"

    def command(
        self, command: Sequence[str] | str, cwd: Path
    ) -> tuple[list[str] | str, bool]:
        """The command to start for `command` in `cwd`, and whether it is a
        shell line: the same on the host, wrapped to run in the chroot."""
        if self.root is None:
            return (
                command if isinstance(command, str) else list(command),
                isinstance(command, str),
            )
        argv = ["/bin/sh", "-c", command] if isinstance(command, str) else command
        shared = [str(path) for path in shared_directories(cwd)]
        return [
            "unshare",
            "--mount",
            "--propagation=private",
            "/bin/sh",
            "-c",
            CHROOT_SCRIPT,
            "chroot-run",
            str(self.root),
            str(cwd),
            uv_binary(),
            ":".join(shared),
            *argv,
        ], False

    def environment(self, env: dict[str, str]) -> dict[str, str]:
        """`env` with uv pinned to this interpreter (and, in the chroot, the
        chroot's PATH and the host's uv cache)."""
        pinned = env | {"UV_PYTHON": self.executable, "UV_PYTHON_DOWNLOADS": "never"}
        if self.root is None:
            return pinned
        return pinned | {
            "PATH": CHROOT_PATH,
            "UV_CACHE_DIR": str(uv_cache()),
            # A hard link from the cache cannot cross a bind mount.
            "UV_LINK_MODE": "copy",
        }


def variable(version: str) -> str:
    """The environment variable that names the interpreter for `version`."""
    return "KILN_PYTHON_" + version.replace(".", "_")


def how_to_get(version: str) -> str:
    suite = DEBIAN_SUITES.get(version)
    ways = [
        f"`pyenv install {version}`",
        f"{variable(version)}=/path/to/python{version}",
        f"python{version} on PATH",
    ]
    if suite:
        ways.append(
            f"debootstrap (apt-get install debootstrap; root) for Debian {suite}'s"
        )
    return ", or ".join(ways)


@functools.cache
def reported(executable: str) -> tuple[str, str] | None:
    """What `executable` says it is: its major.minor and its real path."""
    try:
        result = subprocess.run(
            [
                executable,
                "-c",
                "import sys; print('%d.%d' % sys.version_info[:2]); "
                "print(sys.executable)",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except OSError:
        return None
    lines = result.stdout.split()
    if result.returncode != 0 or len(lines) != 2:
        return None
    return lines[0], lines[1]


def pyenv_candidates(version: str) -> list[Path]:
    """pyenv's interpreters for `version`, the newest patch release first."""
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    exact = re.compile(rf"{re.escape(version)}\.(\d+)")
    found = []
    for directory in (root / "versions").glob(f"{version}.*"):
        match = exact.fullmatch(directory.name)
        executable = directory / "bin" / f"python{version}"
        if match and executable.is_file():
            found.append((int(match.group(1)), executable))
    return [executable for _, executable in sorted(found, reverse=True)]


def on_host(version: str) -> Python | None:
    """The host's interpreter for `version`, if it has one."""
    given = os.environ.get(variable(version))
    if given:
        found = reported(given)
        if found is None or found[0] != version:
            raise MissingPython(
                f"{variable(version)}={given} is not Python {version} "
                f"(it reports {found[0] if found else 'nothing'})"
            )
        return Python(version, found[1])
    on_path = shutil.which(f"python{version}")
    for candidate in [*pyenv_candidates(version), *([on_path] if on_path else [])]:
        found = reported(str(candidate))
        if found is not None and found[0] == version:
            return Python(version, found[1])
    return None


def in_debian(version: str) -> Python:
    """Debian's Python `version`, in a chroot with what the suites use."""
    suite = DEBIAN_SUITES.get(version)
    if suite is None:
        raise MissingPython(f"Debian ships no Python {version} to stand in")
    if os.geteuid() != 0:
        raise MissingPython(
            f"Python {version} would run in a Debian {suite} chroot, "
            "which needs root (mount namespaces and chroot)"
        )
    try:
        root = rootfs(suite, [f"python{version}", *CHROOT_PACKAGES])
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        raise MissingPython(
            f"the Debian {suite} chroot with Python {version} was not made: {error}"
        ) from error
    executable = f"/usr/bin/python{version}"
    if not (root / executable.lstrip("/")).is_file():
        raise MissingPython(f"{root} has no {executable}")
    return Python(version, executable, root)


def find(version: str) -> Python:
    """Where `version` runs here; MissingPython (saying how to get it) if
    nowhere."""
    if version not in OFFERED:
        raise MissingPython(f"Python {version} is not offered ({', '.join(OFFERED)})")
    try:
        found = on_host(version)
        if found is None:
            found = in_debian(version)
    except MissingPython as error:
        raise MissingPython(
            f"no Python {version} here: {error}. Every offered Python runs the "
            f"generated suites; get it with {how_to_get(version)}"
        ) from error
    return found


def require(version: str) -> Python:
    """Where `version` runs here, or the test fails saying how to get it."""
    try:
        return find(version)
    except MissingPython as error:
        pytest.fail(str(error), pytrace=False)


@functools.cache
def uv_binary() -> str:
    """The uv executable itself (not a shim script), bound into chroots."""
    candidates = [os.environ.get("KILN_UV"), os.environ.get("UV"), shutil.which("uv")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            with Path(candidate).open("rb") as binary:
                if binary.read(4) == b"\x7fELF":
                    return str(Path(candidate).resolve())
    raise MissingPython(
        "no uv executable to run in the chroot (a shim script cannot run there): "
        "run the tests with `uv run`, or set KILN_UV to uv's binary"
    )


@functools.cache
def uv_cache() -> Path:
    """The host's uv cache, which the chroot's uv shares."""
    given = os.environ.get("UV_CACHE_DIR")
    if given:
        return Path(given).resolve()
    result = subprocess.run(
        [uv_binary(), "cache", "dir"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return Path(result.stdout.strip()).resolve()


def shared_directories(cwd: Path) -> list[Path]:
    """Host directories a chroot sees at their own paths: the temporary
    directory (pytest's and the bakes' under it), the uv cache, and `cwd`
    when it is outside both."""
    shared = [Path(tempfile.gettempdir()).resolve(), uv_cache()]
    cwd = cwd.resolve()
    if not any(cwd.is_relative_to(directory) for directory in shared):
        shared.append(cwd)
    for directory in shared:
        if ":" in str(directory):
            raise MissingPython(f"{directory}: a path with ':' cannot be shared")
    return shared


def main() -> int:
    """Find every offered Python; say where each runs; 1 if one is missing."""
    missing = 0
    for version in OFFERED:
        try:
            print(find(version), flush=True)
        except MissingPython as error:
            print(f"MISSING: {error}", file=sys.stderr, flush=True)
            missing += 1
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
