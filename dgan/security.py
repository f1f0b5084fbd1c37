"""CURVE keys: encryption and an allowlist that ties each public key to one role and one name.

`dgan keys generate NAME --role node` writes NAME.key (public, with the role and
name as metadata) and NAME.key_secret (keep it private).  The broker loads every
public key of its `--authorized-keys` folder; ZeroMQ's ZAP handshake refuses any
other key, and the broker then checks each message against the key's role and name.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

ROLES = ("node", "generator", "monitor", "broker")


class KeyError_(Exception):
    """A key file that is missing, unreadable or not a dgan key."""


@dataclass(frozen=True)
class Identity:
    role: str
    name: str


def generate_keys(directory: Path, name: str, role: str) -> tuple[Path, Path]:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise ValueError("a key name is 1-64 letters, digits, '.', '_' or '-'")
    directory.mkdir(parents=True, exist_ok=True)
    public_key, secret_key = zmq.curve_keypair()
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    # pyzmq's create_certificates puts metadata in the secret file only; the broker needs it with the public key.
    _write_cert(public, public_key, None, role, name)
    _write_cert(secret, public_key, secret_key, role, name)
    secret.chmod(0o600)
    return public, secret


def _write_cert(path: Path, public: bytes, secret: bytes | None, role: str, name: str) -> None:
    """ZeroMQ's ZPL certificate format, readable by zmq.auth.load_certificate."""
    lines = [f"#   dgan {'secret' if secret else 'public'} CURVE certificate for {name} ({role})", "",
             "metadata", f'    role = "{role}"', f'    name = "{name}"', "curve",
             f'    public-key = "{public.decode()}"']
    if secret:
        lines.append(f'    secret-key = "{secret.decode()}"')
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def read_metadata(path: Path) -> dict[str, str]:
    meta: dict[str, str] = {}
    in_meta = False
    for line in path.read_text().splitlines():
        if line.strip() == "metadata":
            in_meta = True
        elif in_meta and line.startswith("    ") and "=" in line:
            k, v = line.strip().split("=", 1)
            meta[k.strip()] = v.strip().strip('"')
        elif line and not line.startswith(" "):
            in_meta = False
    return meta


def load_secret(path: Path) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys from a *.key_secret file."""
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise KeyError_(f"cannot read key {path}: {exc}") from None
    if not secret:
        raise KeyError_(f"{path} holds no secret key (use the .key_secret file)")
    return public, secret


def load_public(path: Path) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise KeyError_(f"cannot read key {path}: {exc}") from None
    return public


def load_allowlist(directory: Path) -> dict[bytes, Identity]:
    """Every public key in ``directory`` with its role and name."""
    if not directory.is_dir():
        raise KeyError_(f"authorized-keys folder {directory} does not exist")
    out: dict[bytes, Identity] = {}
    for path in sorted(directory.glob("*.key")):
        meta = read_metadata(path)
        if meta.get("role") not in ROLES or not meta.get("name"):
            raise KeyError_(f"{path} has no dgan role/name metadata (make keys with `dgan keys generate`)")
        out[load_public(path)] = Identity(meta["role"], meta["name"])
    return out


def client_setup(secret_file: Path, broker_public_file: Path) -> Callable[[zmq.Socket], None]:
    """A socket_setup for links: encrypt to the broker with our own key."""
    public, secret = load_secret(secret_file)
    server = load_public(broker_public_file)

    def setup(sock: zmq.Socket) -> None:
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_serverkey = server

    return setup


class _Allowlist:
    def __init__(self, keys: dict[bytes, Identity]) -> None:
        self.keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


def start_authenticator(context: zmq.Context, allowlist: dict[bytes, Identity]) -> ThreadAuthenticator:
    """ZAP handler: only allowlisted keys complete the CURVE handshake."""
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=_Allowlist(allowlist))
    return auth


def server_setup(sock: zmq.Socket, secret_file: Path) -> None:
    public, secret = load_secret(secret_file)
    sock.curve_server = True
    sock.curve_secretkey = secret
    sock.curve_publickey = public
