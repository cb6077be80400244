"""ZeroMQ CURVE: who may connect (a ZAP allow-list of client keys) and encryption of every stream.

One key folder (``neurocine keys --out DIR``) holds a server and a client certificate and the allow-list::

    DIR/server.key  DIR/server.key_secret    what every binding socket (rig, replay, decoder output) uses
    DIR/client.key  DIR/client.key_secret    what every connecting socket (decoder input, recorder, viewer) uses
    DIR/authorized/*.key                     public keys a binding socket accepts (the client's, at first)

A connecting socket checks the server's public key (a stranger that binds the rig's port cannot inject:
its handshake fails); a binding socket accepts only clients whose public key is in ``authorized/`` (a
stranger cannot read, nor count as a subscriber). Put ``server.key_secret`` only where something binds.
Keys are turned on by ``--keys DIR`` on a verb or by the NEUROCINE_KEYS environment variable; without them
loopback stays plaintext, and binding any other address is refused unless ``--insecure`` (NEUROCINE_INSECURE=1).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

ENV_KEYS = "NEUROCINE_KEYS"
ENV_INSECURE = "NEUROCINE_INSECURE"
AUTHORIZED = "authorized"
log = logging.getLogger("neurocine.auth")


class KeysError(ValueError):
    """A key folder is missing a file or holds a damaged certificate."""


@dataclasses.dataclass(frozen=True)
class Keys:
    """The certificates of one key folder (z85 bytes)."""

    folder: Path
    server_public: bytes
    server_secret: bytes | None
    client_public: bytes
    client_secret: bytes
    authorized: frozenset[bytes]

    @classmethod
    def load(cls, folder: str | Path) -> Keys:
        d = Path(folder)
        server_pub, server_sec = _cert(d / "server.key_secret", d / "server.key")
        client_pub, client_sec = _cert(d / "client.key_secret", None)
        if client_sec is None:
            raise KeysError(f"{d / 'client.key_secret'}: holds no secret key")
        allowed_dir = d / AUTHORIZED
        if not allowed_dir.is_dir():
            raise KeysError(f"{allowed_dir}: missing (the public keys of the clients allowed to connect)")
        try:
            allowed = frozenset(zmq.auth.load_certificates(str(allowed_dir)))
        except (OSError, ValueError) as e:
            raise KeysError(f"{allowed_dir}: a damaged certificate ({e})") from e
        return cls(d, server_pub, server_sec, client_pub, client_sec, allowed)


def _cert(secret_path: Path, public_path: Path | None) -> tuple[bytes, bytes | None]:
    """(public, secret) from the secret file, or (public, None) from the public one when no secret is here."""
    path = secret_path if secret_path.is_file() or public_path is None else public_path
    if not path.is_file():
        raise KeysError(f"{path}: missing (make a key folder with `neurocine keys --out DIR`)")
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as e:
        raise KeysError(f"{path}: not a ZeroMQ certificate ({e})") from e
    return public, secret


def make_keys(out: str | Path) -> dict[str, str]:
    """Create a key folder: server and client certificates and the allow-list holding the client."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    made = {}
    for name in ("server", "client"):
        if (d / f"{name}.key_secret").exists():
            raise KeysError(f"{d / (name + '.key_secret')}: exists; refusing to overwrite keys")
        public, secret = zmq.auth.create_certificates(str(d), name)
        os.chmod(secret, 0o600)
        made[name] = public
    (d / AUTHORIZED).mkdir(exist_ok=True)
    shutil.copy(d / "client.key", d / AUTHORIZED / "client.key")
    return made


# ------------------------------------------------------------------------------------ process defaults
def configure(keys_dir: str | None, insecure: bool) -> None:
    """What a verb's --keys / --insecure say, for every socket of this process and the processes it starts."""
    if keys_dir:
        Keys.load(keys_dir)  # fail now, naming the file
        os.environ[ENV_KEYS] = str(Path(keys_dir).resolve())
    if insecure:
        os.environ[ENV_INSECURE] = "1"


def default_keys() -> Keys | None:
    folder = os.environ.get(ENV_KEYS)
    return Keys.load(folder) if folder else None


def insecure_allowed() -> bool:
    return os.environ.get(ENV_INSECURE, "") not in ("", "0")


def is_loopback(endpoint: str) -> bool:
    """ipc://, inproc:// and tcp:// to 127.0.0.0/8, localhost or ::1 never leave the machine."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    host = urlsplit(endpoint).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


# ------------------------------------------------------------------------------------ sockets
class _AllowList:
    """ZAP callback: allowed when the client's key is listed; refusals are logged (at most one a second)."""

    def __init__(self) -> None:
        self.keys: set[bytes] = set()
        self.refused = 0
        self._last_log = 0.0

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keys:
            return True
        self.refused += 1
        now = time.monotonic()
        if now - self._last_log >= 1.0:
            self._last_log = now
            log.warning("refused a peer with an unknown CURVE key %s (%d refused so far)",
                        key.decode("ascii", "replace"), self.refused)
        return False


_auth_lock = threading.Lock()
_authenticators: dict[int, tuple[ThreadAuthenticator, _AllowList]] = {}


def allow_list(context: zmq.Context) -> _AllowList:
    """The ZAP handler of `context` (started once; ZeroMQ then asks it about every CURVE client)."""
    with _auth_lock:
        entry = _authenticators.get(id(context))
        if entry is None:
            auth = ThreadAuthenticator(context, log=logging.getLogger("neurocine.zap"))
            auth.start()
            allowed = _AllowList()
            auth.configure_curve_callback("*", credentials_provider=allowed)
            entry = _authenticators[id(context)] = (auth, allowed)
        return entry[1]


def secure_server(sock: zmq.Socket, keys: Keys) -> None:
    """Make a binding socket a CURVE server that accepts only the allow-listed clients (call before bind)."""
    if keys.server_secret is None:
        raise KeysError(f"{keys.folder / 'server.key_secret'}: missing; only the public server key is here, "
                        "so this machine cannot bind a secured socket")
    allow_list(sock.context).keys.update(keys.authorized)
    sock.curve_secretkey = keys.server_secret
    sock.curve_publickey = keys.server_public
    sock.curve_server = True


def secure_client(sock: zmq.Socket, keys: Keys) -> None:
    """Make a connecting socket a CURVE client that talks only to the holder of the server key."""
    sock.curve_secretkey = keys.client_secret
    sock.curve_publickey = keys.client_public
    sock.curve_serverkey = keys.server_public
