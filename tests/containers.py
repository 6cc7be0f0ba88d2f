"""A private Docker engine, and the images a generated project's Dockerfile and
compose.yaml name, made here, for the container tests (tests/test_container.py).

No registry is reachable where the template is tested, so every image those
files name is made on this machine and imported under that name:

- ``python:<3.13|3.14>-slim-trixie``: Debian's CPython (trixie's 3.13, forky's
  3.14) in a debootstrap root filesystem (tests/rootfs.py), with the
  /usr/local/bin/python3 and python links of the official image;
- ``ghcr.io/astral-sh/uv:<version>``: uv's static binaries, /uv and /uvx, from
  the musllinux wheel of that version on PyPI;
- ``postgres:17-alpine``, ``redis:7.4-alpine``, ``nginx:1.30-alpine`` and
  ``axllent/mailpit:v1.27``: stand-ins, not the official images, made from one
  trixie root filesystem (Debian's PostgreSQL 17, Redis, nginx, wget and
  aiosmtpd) with the entry points below, which honour what compose.yaml asks
  of those images.

The engine is Debian's dockerd (docker.io), started for one test at a time with
a socket, exec root, pid file and cgroup parent of its own, no iptables and no
default bridge; the Compose and Buildx plugins come from Debian forky's
packages. Its data root (the images and the build cache) is kept under
KILN_CACHE between runs, behind a lock; no container, network, volume, mount or
process of it is left once it stops.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from rootfs import CACHE, DONE, locked, mirror, rootfs

DOCKER_CACHE = CACHE / "docker"
# The engine's images and build cache, kept between runs (one engine at a time).
DATA_ROOT = DOCKER_CACHE / "data"
ENGINE_LOCK = DOCKER_CACHE / "engine.lock"
# DOCKER_CONFIG of every command run here: cli-plugins/docker-{compose,buildx}.
CONFIG = DOCKER_CACHE / "config"
PLUGINS = ("docker-compose", "docker-buildx")
# The Debian release whose packages bring Compose v2 and Buildx.
PLUGIN_SUITE = "forky"
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
PYPI = os.environ.get("KILN_PYPI_SIMPLE", "https://pypi.org/simple").rstrip("/")

# Where Debian has each Python the images may be built on; there is no 3.12 or
# 3.11 in any Debian release these images can come from.
PYTHON_SUITES = {"3.13": "trixie", "3.14": "forky"}
PYTHON_PACKAGES = ("passwd", "ca-certificates")
SERVICE_PACKAGES = (
    "postgresql-17",
    "redis-server",
    "nginx",
    "wget",
    "python3-aiosmtpd",
)
SERVICES_SUITE = "trixie"
# Left out of every image: the kernel's file systems, apt's downloads and lists.
EXCLUDED = (
    "./dev/*",
    "./proc/*",
    "./sys/*",
    "./tmp/*",
    "./var/cache/apt/*",
    "./var/lib/apt/lists/*",
    f"./{DONE}",
)
# An image's source (its root filesystem, files and settings), as a label: an
# image whose label differs is imported again.
SOURCE_LABEL = "kiln.source"
# What an engine runs: one of these naming its exec root, or started by its
# dockerd, is its own.
ENGINE_PROGRAMS = frozenset(
    {
        "dockerd",
        "containerd",
        "containerd-shim",
        "containerd-shim-runc-v2",
        "runc",
        "docker-proxy",
    }
)

# What dockerd and containerd make outside their roots, whatever their flags.
RUN_FOLDERS = (Path("/run/docker"), Path("/run/containerd"))
# The build cache kept between runs (the rest is pruned when an engine stops).
KEPT_CACHE = "3GB"
LOCK_TIMEOUT = 1800.0  # another test may hold the engine through a cold build
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
IMPORT_TIMEOUT = 600.0
DOWNLOAD_TIMEOUT = 300.0


class EngineError(RuntimeError):
    """A docker command failed; the message has its output."""


# --- The stand-ins' entry points (test infrastructure, not the real images) --

POSTGRES_ENTRYPOINT = """\
#!/bin/sh
# Kiln's stand-in for the postgres image's entry point (container tests only).
# First start: a UTF-8 cluster in PGDATA whose superuser is POSTGRES_USER with
# POSTGRES_PASSWORD, and the POSTGRES_DB database, made while the server
# listens on its socket only. Then the server, on every interface.
set -eu
user=${POSTGRES_USER:-postgres}
database=${POSTGRES_DB:-$user}
: "${POSTGRES_PASSWORD:?the stand-in, like the image, needs POSTGRES_PASSWORD}"
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
mkdir -p "$PGDATA" /run/postgresql
chown postgres:postgres "$PGDATA" /run/postgresql
chmod 0700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    password=$(mktemp)
    printf '%s\\n' "$POSTGRES_PASSWORD" > "$password"
    chown postgres "$password"
    as_postgres initdb --pgdata="$PGDATA" --encoding=UTF8 --locale=C.UTF-8 \\
        --username="$user" --pwfile="$password" \\
        --auth-local=trust --auth-host=scram-sha-256
    rm -f "$password"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    if [ "$database" != postgres ]; then
        as_postgres pg_ctl --pgdata="$PGDATA" --wait \\
            --options="-c listen_addresses=''" start
        as_postgres psql --no-psqlrc --username="$user" --dbname=postgres \\
            --set=ON_ERROR_STOP=1 --command="CREATE DATABASE \\"$database\\""
        as_postgres pg_ctl --pgdata="$PGDATA" --wait --mode=fast stop
    fi
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups \\
    postgres -D "$PGDATA" -c "listen_addresses=*"
"""

REDIS_ENTRYPOINT = """\
#!/bin/sh
# Kiln's stand-in for the redis image's entry point (container tests only):
# redis-server on every interface, its files in /data, as the redis user,
# with the options a compose `command: ["redis-server", ...]` adds.
set -eu
if [ "${1:-}" = redis-server ]; then
    shift
fi
mkdir -p /data
chown redis:redis /data
cd /data
exec setpriv --reuid=redis --regid=redis --init-groups \\
    redis-server --bind 0.0.0.0 --protected-mode no --dir /data "$@"
"""

MAILPIT = '''\
#!/usr/bin/python3
"""Kiln's stand-in for Mailpit (container tests only).

`/mailpit` catches mail over SMTP on 1025 and serves, on 8025, GET /readyz and
GET /api/v1/messages (the caught messages, newest first, in the shape of
Mailpit's API: From, To, Subject). `/mailpit readyz` asks the running one.
"""

import email
import email.policy
import json
import signal
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SMTP_PORT = 1025
HTTP_PORT = 8025
caught = []
lock = threading.Lock()


class Catcher:
    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(
            envelope.content, policy=email.policy.default
        )
        with lock:
            caught.append(
                {
                    "ID": str(len(caught) + 1),
                    "From": {"Address": envelope.mail_from},
                    "To": [{"Address": address} for address in envelope.rcpt_tos],
                    "Subject": str(message.get("Subject", "")),
                }
            )
        return "250 Message accepted for delivery"


class Api(BaseHTTPRequestHandler):
    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/readyz":
            self.answer(200, "text/plain", b"ok")
        elif path == "/api/v1/messages":
            with lock:
                messages = caught[::-1]
            body = {"total": len(messages), "messages": messages}
            self.answer(200, "application/json", json.dumps(body).encode())
        else:
            self.answer(404, "text/plain", b"not found")

    def answer(self, status, kind, body):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


def serve():
    from aiosmtpd.controller import Controller

    smtp = Controller(Catcher(), hostname="0.0.0.0", port=SMTP_PORT)
    smtp.start()
    http = ThreadingHTTPServer(("0.0.0.0", HTTP_PORT), Api)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"mailpit stand-in: SMTP on {SMTP_PORT}, HTTP on {HTTP_PORT}", flush=True)
    try:
        http.serve_forever()
    finally:
        smtp.stop()


def readyz():
    url = f"http://127.0.0.1:{HTTP_PORT}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=3) as answer:
            return 0 if answer.status == 200 else 1
    except OSError:
        return 1


if __name__ == "__main__":
    sys.exit(readyz() if sys.argv[1:] == ["readyz"] else serve())
'''

# Each stand-in: its name, as compose.yaml gives it, and its image settings.
STAND_INS = {
    "postgres:17-alpine": (
        "ENV PATH=/usr/lib/postgresql/17/bin:/usr/local/sbin:/usr/local/bin:"
        "/usr/sbin:/usr/bin:/sbin:/bin",
        "ENV PGDATA=/var/lib/postgresql/data",
        'ENTRYPOINT ["/usr/local/bin/kiln-postgres"]',
        # Fast shutdown, as the official image asks for.
        "STOPSIGNAL SIGINT",
        "EXPOSE 5432",
    ),
    "redis:7.4-alpine": (
        'ENTRYPOINT ["/usr/local/bin/kiln-redis"]',
        "WORKDIR /data",
        "EXPOSE 6379",
    ),
    # Debian's nginx, run as the official image runs it: in the foreground,
    # with the configuration compose mounts at /etc/nginx/nginx.conf.
    "nginx:1.30-alpine": (
        'CMD ["nginx", "-g", "daemon off;"]',
        "STOPSIGNAL SIGQUIT",
        "EXPOSE 80",
    ),
    "axllent/mailpit:v1.27": (
        'ENTRYPOINT ["/mailpit"]',
        "EXPOSE 1025 8025",
    ),
}


# --- Downloads, made once per machine ----------------------------------------


def run(
    command: Sequence[str],
    *,
    timeout: float,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command; raise with its output if it fails."""
    result = subprocess.run(
        command,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise EngineError(
            f"{' '.join(command)} exited {result.returncode}\n"
            f"--- stdout ---\n{result.stdout[-4000:]}\n"
            f"--- stderr ---\n{result.stderr[-4000:]}"
        )
    return result


def plugins() -> Path:
    """DOCKER_CONFIG with the Compose and Buildx plugins, from forky's packages
    (apt-get download with sources, lists and cache of its own: /etc/apt is
    left alone)."""
    folder = CONFIG / "cli-plugins"
    with locked(DOCKER_CACHE / "plugins.lock"):
        if all((folder / name).is_file() for name in PLUGINS):
            return CONFIG
        work = Path(tempfile.mkdtemp(prefix="apt-", dir=DOCKER_CACHE))
        try:
            signed = (
                f"[signed-by={DEBIAN_KEYRING}] " if DEBIAN_KEYRING.is_file() else ""
            )
            (work / "sources.list").write_text(
                f"deb {signed}{mirror()} {PLUGIN_SUITE} main\n", encoding="utf-8"
            )
            for name in ("lists/partial", "cache/archives/partial", "parts", "debs"):
                (work / name).mkdir(parents=True)
            options = {
                "Dir::Etc::SourceList": work / "sources.list",
                "Dir::Etc::SourceParts": work / "parts",
                "Dir::State::Lists": work / "lists",
                "Dir::Cache": work / "cache",
                # forky's Release file is past its Valid-Until date.
                "Acquire::Check-Valid-Until": "false",
                "APT::Sandbox::User": "root",
            }
            apt = [
                "apt-get",
                "-q",
                *(f"-o{key}={value}" for key, value in options.items()),
            ]
            run([*apt, "update"], timeout=DOWNLOAD_TIMEOUT)
            debs = work / "debs"
            run([*apt, "download", *PLUGINS], cwd=debs, timeout=DOWNLOAD_TIMEOUT)
            for deb in debs.glob("*.deb"):
                run(["dpkg-deb", "-x", str(deb), str(work / "tree")], timeout=120)
            folder.mkdir(parents=True, exist_ok=True)
            for name in PLUGINS:
                built = work / "tree/usr/libexec/docker/cli-plugins" / name
                if not built.is_file():
                    raise EngineError(f"forky's {name} package has no {built.name}")
                shutil.copy2(built, folder / f".{name}.partial")
                (folder / f".{name}.partial").rename(folder / name)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return CONFIG


def uv_binaries(version: str) -> Path:
    """A folder with uv's static uv and uvx of `version`, from the musllinux
    wheel on PyPI (its hash checked against the index)."""
    folder = CACHE / "uv" / version
    machine = platform.machine()
    with locked(CACHE / "uv" / f"{version}.lock"):
        if (folder / DONE).is_file():
            return folder
        request = urllib.request.Request(
            f"{PYPI}/uv/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            index = json.load(answer)
        tag = f"musllinux_1_1_{machine}"
        wheels = [
            entry
            for entry in index["files"]
            if entry["filename"].startswith(f"uv-{version}-")
            and entry["filename"].removesuffix(".whl").endswith(tag)
        ]
        if not wheels:
            raise EngineError(f"PyPI has no uv {version} wheel for {tag}")
        with urllib.request.urlopen(wheels[0]["url"], timeout=DOWNLOAD_TIMEOUT) as got:
            data = got.read()
        digest = hashlib.sha256(data).hexdigest()
        if digest != wheels[0]["hashes"]["sha256"]:
            raise EngineError(f"{wheels[0]['filename']}: sha256 {digest} is not PyPI's")
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        with zipfile.ZipFile(io.BytesIO(data)) as wheel:
            for name in ("uv", "uvx"):
                (folder / name).write_bytes(
                    wheel.read(f"uv-{version}.data/scripts/{name}")
                )
                (folder / name).chmod(0o755)
        (folder / DONE).write_text(wheels[0]["filename"] + "\n", encoding="utf-8")
    return folder


# --- The engine --------------------------------------------------------------


@contextlib.contextmanager
def exclusive(path: Path, timeout: float) -> Iterator[None]:
    """Hold an exclusive lock on `path`, waiting at most `timeout` seconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EngineError(
                        f"{path} stayed locked for {timeout:g} s: another run holds "
                        "the container tests' engine"
                    ) from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def command_lines() -> dict[int, list[str]]:
    """Every process's command line, by pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                raw = (entry / "cmdline").read_bytes()
                if raw:
                    found[int(entry.name)] = raw.decode(errors="replace").split("\0")
    return found


def mounts_under(roots: Sequence[Path]) -> list[str]:
    """Mount points at or below any of `roots`, deepest first."""
    prefixes = [str(root) for root in roots]
    points = []
    for line in Path("/proc/mounts").read_text(encoding="utf-8").splitlines():
        point = line.split(" ")[1].encode().decode("unicode_escape")
        if any(
            point == prefix or point.startswith(prefix + "/") for prefix in prefixes
        ):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def cgroup_folders(parent: str) -> list[Path]:
    """The folders of a cgroup parent, in every cgroup hierarchy, deepest first."""
    found: list[Path] = []
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / parent.strip("/")
        if top.is_dir():
            found += [Path(folder) for folder, _, _ in os.walk(top)]
    return sorted(found, key=lambda folder: len(folder.parts), reverse=True)


def descendants(pid: int) -> list[int]:
    """The processes `pid` started, and theirs, while it still runs."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, of in parents.items() if of == parent]
        found += children
        frontier += children
    return found


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@dataclass
class Engine:
    """One running dockerd, its client settings and what it must leave behind."""

    exec_root: Path
    cgroup_parent: str
    log: Path
    process: subprocess.Popen[bytes] | None = None
    # Folders outside its roots that it makes, which are removed if still empty.
    outside: list[Path] = field(default_factory=list)
    stopped: bool = False

    @property
    def socket(self) -> Path:
        return self.exec_root / "docker.sock"

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The caller's environment, pointed at this engine only."""
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("DOCKER_", "COMPOSE_", "BUILDX_", "BUILDKIT_"))
        }
        env |= {
            "DOCKER_HOST": f"unix://{self.socket}",
            "DOCKER_CONFIG": str(CONFIG),
            "BUILDKIT_PROGRESS": "plain",
            "COMPOSE_ANSI": "never",
            "COMPOSE_PROGRESS": "plain",
        }
        return env | (extra or {})

    def docker(
        self,
        *args: str,
        timeout: float = 120,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        check: bool = True,
        stdin: int | IO[bytes] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the docker client against this engine."""
        result = subprocess.run(
            ["docker", *args],
            cwd=cwd,
            env=self.environment(env),
            stdin=stdin,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise EngineError(
                f"docker {' '.join(args)} exited {result.returncode}\n"
                f"--- stdout ---\n{result.stdout[-6000:]}\n"
                f"--- stderr ---\n{result.stderr[-6000:]}"
            )
        return result

    def objects(self) -> dict[str, list[str]]:
        """Containers (running or not), networks of its own, and volumes."""
        listings = {
            "containers": ("ps", "--all", "--quiet"),
            "networks": ("network", "ls", "--quiet", "--filter", "type=custom"),
            "volumes": ("volume", "ls", "--quiet"),
        }
        return {
            kind: self.docker(*command).stdout.split()
            for kind, command in listings.items()
        }

    def clear(self) -> dict[str, list[str]]:
        """Remove every container, network and volume; what was there."""
        found = self.objects()
        if found["containers"]:
            self.docker("rm", "--force", "--volumes", *found["containers"], timeout=120)
        for network in found["networks"]:
            self.docker("network", "rm", network, check=False)
        if found["volumes"]:
            self.docker("volume", "rm", "--force", *found["volumes"], check=False)
        return {kind: names for kind, names in found.items() if names}

    def start(self) -> None:
        self.exec_root.mkdir(parents=True, exist_ok=True)
        DATA_ROOT.mkdir(parents=True, exist_ok=True)
        config = self.exec_root / "daemon.json"
        config.write_text("{}\n", encoding="utf-8")  # not the host's daemon.json
        self.outside = [path for path in RUN_FOLDERS if not path.exists()]
        command = [
            "dockerd",
            f"--config-file={config}",
            f"--data-root={DATA_ROOT}",
            f"--exec-root={self.exec_root}",
            f"--pidfile={self.exec_root / 'dockerd.pid'}",
            f"--host=unix://{self.socket}",
            f"--cgroup-parent={self.cgroup_parent}",
            "--iptables=false",
            "--ip-forward=false",
            "--bridge=none",
        ]
        with self.log.open("wb") as output:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise EngineError(
                    f"dockerd exited {self.process.returncode}\n{self.tail()}"
                )
            if self.socket.exists():
                probe = self.docker(
                    "version", "--format", "{{.Server.Version}}", check=False
                )
                if probe.returncode == 0:
                    return
            if time.monotonic() > deadline:
                raise EngineError(
                    f"dockerd not ready in {START_TIMEOUT:g} s\n{self.tail()}"
                )
            time.sleep(0.2)

    def tail(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-4000:]

    def stop(self) -> list[str]:
        """Stop the engine; what it left behind (then removed), if anything."""
        if self.stopped:
            return []
        self.stopped = True
        left: list[str] = []
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(EngineError, subprocess.TimeoutExpired):
                if objects := self.clear():
                    left.append(f"removed at stop: {objects}")
                # Kept for the next run: the images in use and some build cache.
                self.docker("image", "prune", "--force")
                self.docker(
                    "builder", "prune", "--force", f"--reserved-space={KEPT_CACHE}"
                )
            started = descendants(self.process.pid)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                left.append(f"dockerd did not stop in {STOP_TIMEOUT:g} s: killed")
                self.process.kill()
                self.process.wait(timeout=30)
            children = [pid for pid in started if Path(f"/proc/{pid}").exists()]
        return left + sweep(self.exec_root, self.cgroup_parent, self.outside, children)


def sweep(
    exec_root: Path,
    cgroup_parent: str,
    outside: Sequence[Path] = (),
    children: Sequence[int] = (),
) -> list[str]:
    """Kill what a stopped engine left running (its containerd and shims, the
    processes of its containers, and `children`, those dockerd had started),
    unmount what it left mounted, and remove its exec root and cgroups; what
    was found."""
    left: list[str] = []
    for pid, argv in command_lines().items():
        program = Path(argv[0]).name
        named = any(str(exec_root) in word for word in argv)
        if program in ENGINE_PROGRAMS and (named or pid in children):
            left.append(f"process {pid}: {' '.join(argv)[:200]}")
            kill(pid)
    for folder in cgroup_folders(cgroup_parent):
        with contextlib.suppress(OSError):
            for member in (folder / "cgroup.procs").read_text().split():
                left.append(f"process {member} in {folder}")
                kill(int(member))
    for point in mounts_under([exec_root, DATA_ROOT]):
        left.append(f"mount {point}")
        subprocess.run(["umount", "--lazy", point], check=False, capture_output=True)
    deadline = time.monotonic() + 10
    for folder in cgroup_folders(cgroup_parent):
        while folder.exists():
            try:
                folder.rmdir()
            except OSError:
                if time.monotonic() > deadline:
                    left.append(f"cgroup {folder} could not be removed")
                    break
                time.sleep(0.1)
    shutil.rmtree(exec_root, ignore_errors=True)
    # Made by this engine (absent before it started): removed when empty.
    remove_empty(outside)
    return left


def remove_empty(paths: Sequence[Path]) -> None:
    """Remove the empty folders in and at `paths`, deepest first."""
    for path in paths:
        folders = [Path(name) for name, _, _ in os.walk(path)]
        for folder in sorted(folders, key=lambda folder: -len(folder.parts)):
            with contextlib.suppress(OSError):
                folder.rmdir()


def stop_orphans() -> list[str]:
    """Stop any dockerd still running on the data root (a killed earlier run)."""
    left = []
    for pid, argv in command_lines().items():
        if Path(argv[0]).name != "dockerd" or f"--data-root={DATA_ROOT}" not in argv:
            continue
        options = dict(
            word.partition("=")[::2] for word in argv if word.startswith("--")
        )
        left.append(f"dockerd {pid} of an earlier run")
        children = descendants(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        kill(pid)
        left += sweep(
            Path(options["--exec-root"]),
            options.get("--cgroup-parent", "/docker"),
            children=children,
        )
    # An engine killed outright may leave its data root mounted, and the
    # folders it made in /run (removed when empty and no engine runs at all).
    for point in mounts_under([DATA_ROOT]):
        left.append(f"mount {point} of an earlier run")
        subprocess.run(["umount", "--lazy", point], check=False, capture_output=True)
    running = {Path(argv[0]).name for argv in command_lines().values()}
    if left and not running & {"dockerd", "containerd"}:
        remove_empty(RUN_FOLDERS)
    return left


@contextlib.contextmanager
def engine(log: Path) -> Iterator[Engine]:
    """A private engine for the block, the only one on the data root; stopped
    (and swept) however the block ends. Its dockerd log goes to `log`."""
    for tool in ("dockerd", "docker", "apt-get", "dpkg-deb", "tar"):
        if shutil.which(tool) is None:
            raise EngineError(
                f"{tool} is not installed: the container tests need Debian's "
                "docker.io (dockerd, containerd, runc), apt and tar"
            )
    plugins()
    with exclusive(ENGINE_LOCK, LOCK_TIMEOUT):
        if earlier := stop_orphans():
            print(
                "container engine: cleared after an earlier run:", *earlier, sep="\n  "
            )
        token = secrets.token_hex(4)
        # Short: containerd's sockets live below it (unix sockets are ~100 bytes).
        started = Engine(
            exec_root=Path(tempfile.gettempdir()) / f"kiln-docker-{token}",
            cgroup_parent=f"/kiln-docker-{token}",
            log=log,
        )
        try:
            started.start()
            if earlier_objects := started.clear():
                print(
                    f"container engine: removed after an earlier run: {earlier_objects}"
                )
            yield started
        finally:
            if left := started.stop():
                print("container engine: left behind, now removed:", *left, sep="\n  ")


# --- The images ---------------------------------------------------------------


def source_of(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def tree_source(tree: Path) -> str:
    """A root filesystem's identity: its name and when it was finished."""
    return f"{tree.name}@{(tree / DONE).stat().st_mtime_ns}"


def has_image(docker: Engine, name: str, source: str) -> bool:
    found = docker.docker(
        "image",
        "inspect",
        "--format",
        f'{{{{ index .Config.Labels "{SOURCE_LABEL}" }}}}',
        name,
        check=False,
    )
    return found.returncode == 0 and found.stdout.strip() == source


def import_tree(
    docker: Engine,
    name: str,
    members: Sequence[tuple[Path, Sequence[str]]],
    changes: Sequence[str],
    source: str,
) -> None:
    """`docker import` the files `members` lists ((folder, names) pairs, in the
    image's root) with `changes` (Dockerfile instructions)."""
    command = ["tar", "--create", "--numeric-owner", "--file=-"]
    command += [f"--exclude={pattern}" for pattern in EXCLUDED]
    for folder, names in members:
        command += [f"--directory={folder}", *names]
    with subprocess.Popen(command, stdout=subprocess.PIPE) as tar:
        assert tar.stdout is not None
        options = [f"--change={change}" for change in changes]
        docker.docker(
            "import",
            *options,
            f"--change=LABEL {SOURCE_LABEL}={source}",
            "-",
            name,
            stdin=tar.stdout,
            timeout=IMPORT_TIMEOUT,
        )
        if tar.wait(timeout=60) != 0:
            raise EngineError(f"{' '.join(command)} exited {tar.returncode}")


def python_image(docker: Engine, version: str) -> bool:
    """python:<version>-slim-trixie from Debian's CPython; whether it was made."""
    suite = PYTHON_SUITES.get(version)
    if suite is None:
        raise EngineError(
            f"no Debian release ships CPython {version}, so no python:{version} "
            f"image can be made here (only {', '.join(PYTHON_SUITES)})"
        )
    tree = rootfs(suite, [f"python{version}", *PYTHON_PACKAGES])
    name = f"python:{version}-slim-trixie"
    changes = (
        "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
        "ENV LANG=C.UTF-8",
        # uv trusts its own root certificates unless told: the host's (which
        # rootfs.py copied in, with any proxy's) are what reach the index here.
        "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
        'CMD ["python3"]',
    )
    source = source_of(tree_source(tree), changes)
    if has_image(docker, name, source):
        return False
    with tempfile.TemporaryDirectory() as extra:
        links = Path(extra) / "usr/local/bin"
        links.mkdir(parents=True)
        (links / "python3").symlink_to(f"/usr/bin/python{version}")
        (links / "python").symlink_to("python3")
        import_tree(
            docker,
            name,
            [
                (tree, ["."]),
                (Path(extra), ["usr/local/bin/python3", "usr/local/bin/python"]),
            ],
            changes,
            source,
        )
    return True


def uv_image(docker: Engine, version: str) -> bool:
    """ghcr.io/astral-sh/uv:<version>: /uv and /uvx only; whether it was made."""
    folder = uv_binaries(version)
    name = f"ghcr.io/astral-sh/uv:{version}"
    source = source_of(version, (folder / DONE).read_text(encoding="utf-8"))
    if has_image(docker, name, source):
        return False
    import_tree(docker, name, [(folder, ["uv", "uvx"])], (), source)
    return True


def service_images(docker: Engine) -> bool:
    """The PostgreSQL, Redis and Mailpit stand-ins; whether any was made."""
    tree = rootfs(SERVICES_SUITE, SERVICE_PACKAGES)
    scripts = {
        "usr/local/bin/kiln-postgres": POSTGRES_ENTRYPOINT,
        "usr/local/bin/kiln-redis": REDIS_ENTRYPOINT,
        "mailpit": MAILPIT,
    }
    base_changes = ("ENV LANG=C.UTF-8",)
    base_source = source_of(tree_source(tree), scripts, base_changes)
    base = f"kiln/stand-ins:{base_source}"
    made = False
    if not has_image(docker, base, base_source):
        with tempfile.TemporaryDirectory() as extra:
            for path, text in scripts.items():
                (Path(extra) / path).parent.mkdir(parents=True, exist_ok=True)
                (Path(extra) / path).write_text(text, encoding="utf-8")
                (Path(extra) / path).chmod(0o755)
            import_tree(
                docker,
                base,
                [(tree, ["."]), (Path(extra), list(scripts))],
                base_changes,
                base_source,
            )
        made = True
    for name, changes in STAND_INS.items():
        source = source_of(base_source, changes)
        if has_image(docker, name, source):
            continue
        dockerfile = "\n".join(
            [f"FROM {base}", *changes, f"LABEL {SOURCE_LABEL}={source}", ""]
        )
        docker.docker("build", "--tag", name, "-", input=dockerfile, timeout=300)
        made = True
    # Stand-ins of earlier scripts or root filesystems are not kept.
    tags = docker.docker("image", "ls", "--format={{.Tag}}", "kiln/stand-ins").stdout
    for tag in set(tags.split()) - {base_source}:
        docker.docker("image", "rm", f"kiln/stand-ins:{tag}", check=False)
    return made
