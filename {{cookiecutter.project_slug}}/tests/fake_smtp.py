"""A small SMTP server on 127.0.0.1 for the mail and worker tests.

It speaks just enough SMTP for smtplib (EHLO, MAIL, RCPT, DATA, QUIT), keeps
what it receives, and can answer a first attempt with an error, or hold every
connection until told to go on (a mail server that hangs).
"""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Behaviour:
    # Answers to the first MAIL commands, in order ("451 try later"); then 250.
    refusals: list[str] = field(default_factory=list)
    # Cleared: connections wait (without a greeting) until it is set again.
    go: threading.Event = field(default_factory=threading.Event)
    messages: list[bytes] = field(default_factory=list)
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.go.set()


class Handler(socketserver.StreamRequestHandler):
    server: Server

    def reply(self, line: str) -> None:
        self.wfile.write(f"{line}\r\n".encode())

    def handle(self) -> None:
        behaviour = self.server.behaviour
        with behaviour.lock:
            behaviour.connections += 1
        if not behaviour.go.wait(timeout=60):
            return
        self.reply("220 localhost ESMTP fake")
        while line := self.rfile.readline():
            command = line.decode("ascii", "replace").strip().upper()
            if command.startswith(("EHLO", "HELO")):
                self.reply("250 localhost")
            elif command.startswith("MAIL"):
                with behaviour.lock:
                    refusal = behaviour.refusals.pop(0) if behaviour.refusals else None
                self.reply(refusal or "250 OK")
            elif command.startswith("RCPT"):
                self.reply("250 OK")
            elif command == "DATA":
                self.reply("354 go on")
                self.receive()
            elif command == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("250 OK")

    def receive(self) -> None:
        lines = []
        while (line := self.rfile.readline()) not in {b".\r\n", b""}:
            lines.append(line)
        with self.server.behaviour.lock:
            self.server.behaviour.messages.append(b"".join(lines))
        self.reply("250 queued")


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, behaviour: Behaviour) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.behaviour = behaviour


@contextmanager
def smtp_server() -> Iterator[tuple[int, Behaviour]]:
    """A running fake SMTP server: its port and its behaviour."""
    behaviour = Behaviour()
    server = Server(behaviour)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], behaviour
    finally:
        behaviour.go.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
