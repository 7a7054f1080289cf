"""SSH to hypervisors with paramiko: host keys verified before anything runs.

Commands are argv lists, quoted here and nowhere else; secrets travel on
stdin or through SFTP into files created with mode 0600, never in argv.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shlex
import socket
import time
from dataclasses import dataclass
from typing import Iterator

import paramiko
from paramiko.sftp import CMD_HANDLE, CMD_OPEN, SFTP_FLAG_CREATE, SFTP_FLAG_EXCL, SFTP_FLAG_WRITE
from paramiko.sftp_attr import SFTPAttributes
from paramiko.sftp_file import SFTPFile

from ..api.errors import OperatorError
from ..api.reasons import Reason

CONNECT_TIMEOUT = 15.0
KEEPALIVE_SECONDS = 15   # a silent peer is noticed; a black-holed one fails the channel timeouts below
SFTP_TIMEOUT = 60.0      # per SFTP request
DEAD_PEER_SECONDS = 30   # unacknowledged data for this long: the connection is dead
# What the operator takes from a host: each of a command's stdout and stderr, and each file read, at
# most this many bytes. Beyond it the channel (or file) is closed and the call fails (CommandFailed):
# a hostile or broken host cannot make the operator's memory grow with what it sends.
OUTPUT_LIMIT = int(os.environ.get("RBD_OPERATOR_HOST_OUTPUT_LIMIT") or 4 * 1024 * 1024)
EXIT_GRACE = 5.0  # seconds output may still come after a command's exit status (see SshSession._run)


class SshError(OperatorError):
    """reason: HostUnreachable, AuthenticationFailed, HostKeyMismatch, CommandFailed, CommandTimedOut."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason, message)


@dataclass(frozen=True)
class Result:
    rc: int
    out: str
    err: str


def fingerprint(key_type: str, blob: bytes) -> str:
    """OpenSSH-style SHA256 fingerprint of a public key (paramiko's)."""
    return paramiko.PKey.from_type_string(key_type, blob).fingerprint


# Host key algorithms a pinned key of each type may be presented with (RSA keys sign with SHA-2).
HOST_KEY_ALGORITHMS = {
    "ssh-ed25519": ("ssh-ed25519",),
    "ecdsa-sha2-nistp256": ("ecdsa-sha2-nistp256",),
    "ecdsa-sha2-nistp384": ("ecdsa-sha2-nistp384",),
    "ecdsa-sha2-nistp521": ("ecdsa-sha2-nistp521",),
    "ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256"),
}


def _handshake(address: str, port: int, timeout: float, pinned: tuple[str, bytes] | None) -> paramiko.Transport:
    """TCP connect + SSH key exchange (nothing is sent but the protocol's own messages).

    With a pin, the negotiation offers only the pinned key's algorithm(s) and the presented key must
    be the pinned one: HostKeyMismatch otherwise, before any authentication.
    """
    where = f"{address}:{port}"
    try:
        sock = socket.create_connection((address, port), timeout=timeout)
    except OSError as exc:
        raise SshError(Reason.HOST_UNREACHABLE, f"cannot connect to {where}: {exc.strerror or exc}") from None
    _dead_peer_detection(sock)
    transport = paramiko.Transport(sock)
    transport.banner_timeout = transport.auth_timeout = transport.handshake_timeout = timeout
    try:
        if pinned is not None:
            algorithms = HOST_KEY_ALGORITHMS.get(pinned[0])
            if not algorithms:
                raise SshError(Reason.HOST_KEY_MISMATCH, f"pinned key type {pinned[0]!r} is not supported")
            transport.get_security_options().key_types = algorithms
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
        seen = (key.get_name(), key.asbytes())
        if pinned is not None and seen != pinned:
            raise SshError(Reason.HOST_KEY_MISMATCH,
                           f"{where} presented {seen[0]} {fingerprint(*seen)}, "
                           f"pinned is {pinned[0]} {fingerprint(*pinned)}; nothing was executed")
    except SshError:
        transport.close()
        raise
    except paramiko.SSHException as exc:
        transport.close()
        if pinned is not None and isinstance(exc, paramiko.ssh_exception.IncompatiblePeer) and "host key" in str(exc):
            raise SshError(Reason.HOST_KEY_MISMATCH, f"{where} offers no {pinned[0]} host key (the pinned key's "
                           "algorithm); nothing was executed") from None
        raise SshError(Reason.HOST_UNREACHABLE, f"SSH handshake with {where} failed: {type(exc).__name__}") from None
    except (OSError, EOFError) as exc:
        transport.close()
        raise SshError(Reason.HOST_UNREACHABLE, f"SSH handshake with {where} failed: {type(exc).__name__}") from None
    return transport


def _dead_peer_detection(sock: socket.socket) -> None:
    """A host that vanishes (link cut, black hole) fails the connection in about DEAD_PEER_SECONDS,
    instead of TCP's ~15 minutes of retransmissions: keepalive probes when idle, a user timeout
    when data is unacknowledged."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", KEEPALIVE_SECONDS), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3),
                          ("TCP_USER_TIMEOUT", DEAD_PEER_SECONDS * 1000)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def first_contact(address: str, port: int, timeout: float = CONNECT_TIMEOUT) -> tuple[str, bytes]:
    """The host key a host presents, without authenticating or sending anything (trust on first use)."""
    transport = _handshake(address, port, timeout, None)
    try:
        key = transport.get_remote_server_key()
        return key.get_name(), key.asbytes()
    finally:
        transport.close()


def load_private_key(text: str) -> paramiko.PKey:
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError, IndexError):
            continue
    raise SshError(Reason.AUTHENTICATION_FAILED, "ssh-privatekey is not an unencrypted ed25519, ecdsa or rsa private key")


class SshSession:
    """One SSH connection to a host, used for a whole reconcile, then closed.

    Only to a pinned host key: the first contact of trust-on-first-use goes through
    `first_contact`, which pins and sends nothing.
    """

    def __init__(self, address: str, port: int, user: str, private_key: str, pinned: tuple[str, bytes],
                 timeout: float = CONNECT_TIMEOUT) -> None:
        if pinned is None:
            raise SshError(Reason.HOST_KEY_MISMATCH, f"{address}:{port}: no pinned host key; nothing was executed")
        self.address, self.port, self.user = address, port, user
        self._key = load_private_key(private_key)
        self._pinned = pinned
        self._timeout = timeout
        self._transport: paramiko.Transport | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self.seen_key: tuple[str, bytes] | None = None

    def __enter__(self) -> "SshSession":
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        where = f"{self.address}:{self.port}"
        transport = _handshake(self.address, self.port, self._timeout, self._pinned)
        key = transport.get_remote_server_key()
        self.seen_key = (key.get_name(), key.asbytes())
        try:
            transport.auth_publickey(self.user, self._key)
        except paramiko.AuthenticationException:
            transport.close()
            raise SshError(Reason.AUTHENTICATION_FAILED, f"{where} refused the key for user {self.user}") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            transport.close()
            raise SshError(Reason.HOST_UNREACHABLE, f"SSH handshake with {where} failed: {type(exc).__name__}") from None
        transport.set_keepalive(KEEPALIVE_SECONDS)
        self._transport = transport

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    # -- commands -----------------------------------------------------------
    def run(self, argv: list[str], *, stdin: bytes | None = None, timeout: float = 300, check: bool = False,
            env: dict[str, str] | None = None) -> Result:
        """Run argv (each element quoted) on the host; stdin is sent over the channel."""
        prefix = ["env"] + [f"{k}={v}" for k, v in (env or {}).items()] if env else []
        command = " ".join(shlex.quote(part) for part in prefix + argv)
        with _io_errors(self, f"running {argv[0]}"):
            return self._run(command, argv, stdin, timeout, check)

    def _run(self, command: str, argv: list[str], stdin: bytes | None, timeout: float, check: bool) -> Result:
        assert self._transport is not None, "not connected"
        chan = self._transport.open_session(timeout=self._timeout)
        try:
            chan.settimeout(timeout)
            chan.exec_command(command)
            if stdin is not None:
                chan.sendall(stdin)
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            exited_at = 0.0
            deadline = time.monotonic() + timeout
            while True:
                while chan.recv_ready():
                    out += chan.recv(65536)
                    _bounded(out, f"{argv[0]} printed", self.address)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                    _bounded(err, f"{argv[0]} printed (stderr)", self.address)
                # sshd may send the exit status before the last of the output (it reaps the command while
                # output still waits in its pipe): done once the output has ended too (EOF, or closed), or,
                # if something the command left running keeps its stdout open, EXIT_GRACE after the status.
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    exited_at = exited_at or time.monotonic()
                    if chan.eof_received or chan.closed or time.monotonic() - exited_at > EXIT_GRACE:
                        break
                if time.monotonic() > deadline:
                    raise SshError(Reason.COMMAND_TIMED_OUT, f"{argv[0]} did not finish within {timeout:.0f}s")
                time.sleep(0.01)
            rc = chan.recv_exit_status()
            if rc == -1:  # the channel closed without an exit status: the connection is gone
                raise SshError(Reason.HOST_UNREACHABLE, f"connection to {self.address} lost while {argv[0]} ran")
        except socket.timeout:
            raise SshError(Reason.COMMAND_TIMED_OUT, f"{argv[0]} did not finish within {timeout:.0f}s") from None
        finally:
            chan.close()
        result = Result(rc, out.decode(errors="replace"), err.decode(errors="replace"))
        if check and rc != 0:
            raise SshError(Reason.COMMAND_FAILED, f"{argv[0]} exited {rc}: {tail(result.err or result.out)}")
        return result

    def script(self, text: str, *args: str, timeout: float = 120) -> Result:
        """Run one of our own constant shell scripts (`sh -s`), values passed as quoted arguments."""
        return self.run(["sh", "-s", "--", *args], stdin=text.encode(), timeout=timeout)

    # -- files --------------------------------------------------------------
    @property
    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            assert self._transport is not None, "not connected"
            with _io_errors(self, "opening SFTP"):
                self._sftp = paramiko.SFTPClient.from_transport(self._transport)
                self._sftp.get_channel().settimeout(SFTP_TIMEOUT)
        return self._sftp

    def read(self, path: str) -> bytes | None:
        """The file's bytes (None when it does not exist), at most OUTPUT_LIMIT of them (CommandFailed beyond:
        checked on the size first, and bounded while reading, as a file can grow or lie about its size)."""
        with _io_errors(self, f"reading {path}"):
            try:
                with self.sftp.open(path, "rb") as fh:
                    size = fh.stat().st_size or 0
                    if size > OUTPUT_LIMIT:
                        raise _too_large(f"{path} holds {size} bytes", self.address)
                    data = fh.read(OUTPUT_LIMIT + 1)
                    _bounded(data, path, self.address)
                    return data
            except FileNotFoundError:  # paramiko's IOError(ENOENT, ...) is one
                return None

    def create_exclusive(self, path: str, mode: int) -> SFTPFile:
        """Open a new file for writing that has `mode` from its creation on: O_CREAT|O_EXCL with the
        permissions in the SFTP OPEN request itself (the server passes them to open(2), under its umask),
        so no byte is ever readable under other permissions, and a file (or symlink) already at `path`
        makes it fail instead of being followed or reused. paramiko's SFTPClient.open sends no
        attributes, hence this one request by hand (SFTP v3, draft-ietf-secsh-filexfer-02 6.3)."""
        sftp = self.sftp
        attrs = SFTPAttributes()
        attrs.st_mode = mode
        with _io_errors(self, f"creating {path}"):
            kind, msg = sftp._request(CMD_OPEN, path, SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL, attrs)
        if kind != CMD_HANDLE:
            raise SshError(Reason.COMMAND_FAILED, f"creating {path} on {self.address}: unexpected SFTP answer {kind}")
        return SFTPFile(sftp, msg.get_binary(), "wb")

    def write(self, path: str, data: bytes, mode: int) -> None:
        """Write atomically: a temporary file created with `mode` (see create_exclusive), then renamed.

        A temporary file left by an interrupted write is removed first; if another appears in between,
        the exclusive creation fails (CommandFailed) and nothing is written."""
        tmp = f"{path}.rbd-operator.tmp"
        with _io_errors(self, f"writing {path}"):
            try:
                self.sftp.remove(tmp)
            except FileNotFoundError:
                pass
            with self.create_exclusive(tmp, mode) as fh:
                fh.write(data)
                fh.chmod(mode)  # exactly `mode`, whatever the server's umask took away
            self.sftp.posix_rename(tmp, path)

    def remove(self, path: str) -> bool:
        with _io_errors(self, f"removing {path}"):
            try:
                self.sftp.remove(path)
                return True
            except FileNotFoundError:
                return False

    def listdir(self, path: str) -> list[str]:
        with _io_errors(self, f"listing {path}"):
            try:
                return self.sftp.listdir(path)
            except FileNotFoundError:
                return []

    def makedirs(self, path: str, mode: int = 0o755) -> None:
        self.run(["mkdir", "-p", "-m", oct(mode)[2:], path], check=True)


_NETWORK_ERRNOS = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT, errno.EPIPE, errno.ECONNRESET,
                             errno.ECONNABORTED, errno.ENOTCONN, errno.ESHUTDOWN, errno.EHOSTDOWN, errno.ENETDOWN})


@contextlib.contextmanager
def _io_errors(session: SshSession, what: str) -> Iterator[None]:
    """paramiko and socket failures during a session become SshError (a condition reason)."""
    try:
        yield
    except SshError:
        raise
    except (socket.timeout, TimeoutError):
        raise SshError(Reason.COMMAND_TIMED_OUT, f"{what} on {session.address}: no answer in time") from None
    except (paramiko.SSHException, EOFError, ConnectionError) as exc:
        raise SshError(Reason.HOST_UNREACHABLE, f"{what} on {session.address}: connection lost "
                       f"({type(exc).__name__})") from None
    except OSError as exc:
        reason = Reason.HOST_UNREACHABLE if exc.errno in _NETWORK_ERRNOS else Reason.COMMAND_FAILED
        raise SshError(reason, f"{what} on {session.address}: {exc.strerror or type(exc).__name__}") from None


def _too_large(what: str, address: str) -> SshError:
    return SshError(Reason.COMMAND_FAILED, f"{what} on {address}: output too large (more than {OUTPUT_LIMIT} bytes, "
                    "RBD_OPERATOR_HOST_OUTPUT_LIMIT); stopped reading, nothing of it was used")


def _bounded(data: bytes | bytearray, what: str, address: str) -> None:
    if len(data) > OUTPUT_LIMIT:
        raise _too_large(what, address)


def tail(text: str, limit: int = 400) -> str:
    text = " ".join(text.strip().splitlines()[-4:])
    return text[-limit:]
