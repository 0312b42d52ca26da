"""The running daemon's local control socket: ``barnraise peer pause|resume|leave``.

Each peer listens on a Unix socket in its cache dir, one per identity slot (``CACHE_DIR/control.sock``
for slot 0, ``CACHE_DIR/slot-N/control.sock`` for slot N, ``CACHE_DIR/control-<hash>.sock`` for an
``--identity FILE``), mode 0600, so only the machine's owner can steer it. The peer holds its
identity's lock, so a socket already at that path is a killed daemon's: it is replaced. It is
removed on exit.

Framing: the client sends one JSON line ``{"action": "pause"}``; the daemon answers one JSON line
``{"ok": true, "message": "paused ..."}``. A line is at most ``MAX_LINE_BYTES``; every wait has a
timeout. ``Switches`` is what the socket, the signals and the schedule set and the round loop reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from barnraise.coordinator.errors import PeerUnavailable, ProtocolError
from barnraise.peer.schedule import Window, inside, local_minute
from barnraise.peer.slots import MAX_SLOTS, slot_path

log = logging.getLogger(__name__)

ACTIONS = ("pause", "resume", "leave")
SOCKET_NAME = "control.sock"
MAX_LINE_BYTES = 1024  # a request or reply line, newline included
IO_TIMEOUT_S = 5.0  # each read or write of the socket
MAX_PATH_BYTES = 100  # AF_UNIX paths are limited to 108 bytes on Linux


# --- framing ----------------------------------------------------------------------------------
def encode(obj: dict) -> bytes:
    line = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolError(f"control line of {len(line)} bytes exceeds {MAX_LINE_BYTES}")
    return line


def read_line(sock: socket.socket) -> dict:
    """One JSON object line from ``sock`` (capped, timed out by the socket's timeout)."""
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(MAX_LINE_BYTES - len(buf))
        if not chunk:
            raise ProtocolError("control connection closed before a whole line")
        buf += chunk
        if len(buf) >= MAX_LINE_BYTES and not buf.endswith(b"\n"):
            raise ProtocolError(f"control line longer than {MAX_LINE_BYTES} bytes")
    try:
        obj = json.loads(buf)
    except ValueError:
        raise ProtocolError("control line is not JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("control line is not a JSON object")
    return obj


def parse_request(obj: dict) -> str:
    action = obj.get("action")
    if action not in ACTIONS:
        raise ProtocolError(f"unknown control action {action!r}; one of {', '.join(ACTIONS)}")
    return action


# --- where ------------------------------------------------------------------------------------
def socket_path(cache_dir: Path, identity: Path, slot: int | None) -> Path:
    """The control socket of the peer running with ``identity`` (``slot`` None: --identity FILE)."""
    if slot is not None:
        return identity.parent / SOCKET_NAME
    digest = hashlib.sha256(str(identity.expanduser().resolve()).encode()).hexdigest()[:12]
    return cache_dir / f"control-{digest}.sock"


def candidates(cache_dir: Path, identity: Path | None) -> list[Path]:
    """Sockets a client tries, in order: those of ``identity``, else of every slot, lowest first."""
    if identity is not None:
        found = [socket_path(cache_dir, identity, None)]
        named = identity.expanduser().resolve()
        found += [
            socket_path(cache_dir, slot_path(cache_dir, n), n)
            for n in range(MAX_SLOTS)
            if slot_path(cache_dir, n).resolve() == named
        ]
        return found
    return [socket_path(cache_dir, slot_path(cache_dir, n), n) for n in range(MAX_SLOTS)]


# --- the daemon's side ------------------------------------------------------------------------
class Switches:
    """Pause and leave, set by the control socket's thread and signal handlers, read by the round
    loop; plus the ``--schedule`` windows. Thread-safe: events only."""

    def __init__(self, schedule: tuple[Window, ...] = (), clock: Callable[[], int] = local_minute):
        self.schedule, self.clock = schedule, clock
        self.held = threading.Event()  # paused by `barnraise peer pause`
        self.leaving = threading.Event()  # leave after this round's averaging
        self.changed = threading.Event()  # wakes a paused loop

    def paused(self) -> bool:
        return self.held.is_set() or not inside(self.schedule, self.clock())

    def wait(self, timeout_s: float) -> None:
        self.changed.wait(timeout_s)
        self.changed.clear()

    def leave(self) -> bool:
        """Leave after this round's averaging; False if already asked."""
        if self.leaving.is_set():
            return False
        self.leaving.set()
        self.changed.set()
        return True

    def act(self, action: str) -> str:
        """Apply a control action; returns the line the client prints."""
        if action == "pause":
            self.held.set()
            said = "paused: it finishes its inner step, then stops training and averaging"
        elif action == "resume":
            self.held.clear()
            said = (
                "resumed"
                if not self.paused()
                else "resumed, but outside its --schedule hours: paused until they start"
            )
        else:
            self.leaving.set()
            said = "leaving after this round's averaging"
        self.changed.set()
        log.info("control: %s", said)
        return said


class ControlServer:
    """Serves ``Switches.act`` on the Unix socket at ``path`` in a background thread."""

    def __init__(self, path: Path, switches: Switches):
        self.path, self.switches = path, switches
        self.sock: socket.socket | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> bool:
        """Listen; False (logged) if the path is too long for a Unix socket."""
        if len(os.fsencode(self.path)) > MAX_PATH_BYTES:
            log.warning("no control socket: %s is too long a path; use a shorter --cache-dir", self.path)
            return False
        self.path.unlink(missing_ok=True)  # a killed daemon's: we hold this identity's lock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(4)
        sock.settimeout(0.5)
        self.sock = sock
        self.thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self.thread.start()
        return True

    def _serve(self) -> None:
        while self.sock is not None:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            with conn:
                conn.settimeout(IO_TIMEOUT_S)
                try:
                    reply = {"ok": True, "message": self.switches.act(parse_request(read_line(conn)))}
                except ProtocolError as e:
                    reply = {"ok": False, "message": str(e)[:300]}
                except OSError as e:
                    log.debug("control connection: %s", e)
                    continue
                try:
                    conn.sendall(encode(reply))
                except OSError as e:
                    log.debug("control reply: %s", e)

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()
            if self.thread is not None:
                self.thread.join(timeout=2.0)
            self.path.unlink(missing_ok=True)


# --- the client's side ------------------------------------------------------------------------
def send(path: Path, action: str, timeout_s: float = IO_TIMEOUT_S) -> dict:
    """Send ``action`` to the daemon at ``path``; its reply. PeerUnavailable if none listens there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise PeerUnavailable(f"no daemon at {path}: {e.strerror}") from None
        sock.sendall(encode({"action": action}))
        return read_line(sock)


def command(cache_dir: Path, identity: Path | None, action: str) -> str:
    """Act on the first running daemon among ``candidates``; the line to print."""
    for path in candidates(cache_dir, identity):
        if not path.exists():
            continue
        try:
            reply = send(path, action)
        except PeerUnavailable:
            continue  # a stale socket of a killed daemon
        if not reply.get("ok"):
            raise ProtocolError(f"the peer refused {action}: {reply.get('message', '')}")
        return str(reply.get("message", ""))[:300]
    raise PeerUnavailable(
        f"no barnraise peer is running with cache dir {cache_dir}"
        + (f" and identity {identity}" if identity else "")
        + ": start one with barnraise peer --initial-peers ..."
    )
