"""CURVE keys and authentication for a migration's sockets.

A migration moves a guest's memory: nobody else may read it on the wire or
push pages into a destination. With keys, every socket of a migration (control
and data) runs ZeroMQ CURVE: traffic is encrypted, the destination accepts
only the client public keys it was given, and the source pins the
destination's public key. Keys are ZeroMQ certificate files, as written by
`precopy keygen` (pyzmq's zmq.auth: NAME.key holds the public key, NAME.key_secret
both keys).
"""

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair (z85 bytes); secret is None for a public-only certificate."""

    public: bytes
    secret: bytes | None


def generate(directory, name, *, force=False):
    """Write NAME.key (public) and NAME.key_secret (both keys) into `directory`; return their paths.

    An existing pair is kept (FileExistsError) unless `force`: a replaced secret key locks
    out every peer that was given the old public key.
    """
    directory = Path(directory)
    existing = [path for path in (directory / f"{name}.key", directory / f"{name}.key_secret") if path.exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(map(str, existing))} already exist(s): replacing the key pair locks out "
                              "every peer given its public key; use --force to replace it anyway")
    directory.mkdir(parents=True, exist_ok=True)
    public_file, secret_file = zmq.auth.create_certificates(directory, name)
    Path(secret_file).chmod(0o600)
    return Path(public_file), Path(secret_file)


def load(path, *, need_secret=False):
    """Read a certificate file; with need_secret, refuse one that holds only a public key."""
    if not Path(path).is_file():
        raise ValueError(f"no CURVE key file {path}: make one with 'precopy keygen NAME --dir DIR'")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read CURVE key file {path}: {error}") from None
    if need_secret and not secret:
        raise ValueError(f"{path} holds no secret key: give the NAME.key_secret file that `precopy keygen` wrote")
    return KeyPair(public, secret)


@dataclass(frozen=True)
class ServerSecurity:
    """The destination's key pair and the client public keys it accepts."""

    keys: KeyPair
    allowed: frozenset

    @classmethod
    def from_files(cls, secret_file, allowed_files):
        if not allowed_files:
            raise ValueError("a receiver with a key needs at least one allowed client key (--allow FILE)")
        return cls(load(secret_file, need_secret=True), frozenset(load(path).public for path in allowed_files))


@dataclass(frozen=True)
class ClientSecurity:
    """The source's key pair and the destination public key it pins."""

    keys: KeyPair
    server_public: bytes

    @classmethod
    def from_files(cls, secret_file, server_public_file):
        return cls(load(secret_file, need_secret=True), load(server_public_file).public)


def secure_server(sock, security):
    """Make `sock` a CURVE server with the destination's keys (call before bind)."""
    sock.curve_secretkey = security.keys.secret
    sock.curve_publickey = security.keys.public
    sock.curve_server = True


def secure_client(sock, security):
    """Make `sock` a CURVE client that talks only to the pinned server (call before connect)."""
    sock.curve_secretkey = security.keys.secret
    sock.curve_publickey = security.keys.public
    sock.curve_serverkey = security.server_public


class _AllowList:
    """ZAP credentials provider: a client key is accepted if it is listed."""

    def __init__(self, allowed):
        self.allowed = allowed
        self.refused = 0

    def callback(self, domain, z85_client_key):
        if z85_client_key in self.allowed:
            return True
        self.refused += 1
        return False


class Authenticator:
    """Checks every CURVE handshake on a context's server sockets against the allowed keys."""

    def __init__(self, context, security):
        self.allow_list = _AllowList(security.allowed)
        self.thread = ThreadAuthenticator(context)
        self.thread.start()
        self.thread.configure_curve_callback("*", credentials_provider=self.allow_list)

    @property
    def refused(self):
        """Handshakes refused so far (unknown client keys)."""
        return self.allow_list.refused

    def stop(self):
        self.thread.stop()


HANDSHAKE_FAILURES = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                      | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)  # the socket-monitor events of a refused handshake


def why_handshake_failed(event, value, *, server, secured):
    """What a failed ZMTP handshake (a socket-monitor event and its value) means, in words for this side.

    server: we are the destination; secured: we have CURVE keys. None (on the server) for a
    connection that closed before its handshake, as the source's reachability probe does.
    """
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:  # the destination's allow list said no
        return ("a source whose key is not in --allow" if server
                else "the destination does not accept our key: its --allow must list this sender's NAME.key")
    if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:  # one end has keys, the other none
        if server:
            return ("a source without CURVE keys (it needs --key and --server-key)" if secured
                    else "a source with CURVE keys (this receiver has none: --key and --allow)")
        return ("the destination uses no CURVE keys: drop --key and --server-key, or give it --key and --allow"
                if secured else _NEEDS_KEYS)
    if server:
        if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            return None
        return "a source whose CURVE handshake failed (it pinned another receiver's key with --server-key)"
    if secured:
        return ("the CURVE handshake failed: the destination is not the server whose key --server-key pins, "
                "or it uses no keys")
    return _NEEDS_KEYS  # a CURVE server closes a plain client's connection without saying why


_NEEDS_KEYS = ("the destination requires CURVE keys: give --key (this sender's NAME.key_secret) and --server-key "
               "(its NAME.key)")


def is_loopback(host):
    """True for 127.0.0.0/8, ::1 and localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
