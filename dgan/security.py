"""CURVE keys: encryption, and an allowlist in which the broker's operator ties each key to a role and a name.

`dgan keys generate NAME` writes NAME.key (public) and NAME.key_secret (keep it
private). The metadata in a key file is only its holder's claim and carries no
authority: the broker's operator decides who a key is, with
`dgan keys authorize NAME.key --role node --name dept-a --allowlist FILE`, in a
file only the operator writes. The broker loads that file (`--authorized-keys
FILE`); ZeroMQ's ZAP handshake refuses any other key, and the broker checks each
message against the role and name the operator gave the key.

Allowlist format, one key per line (a line starting with ``#`` is a comment)::

    <role> <name> <z85 public key, 40 characters>
"""

from __future__ import annotations

import os
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


_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_Z85 = re.compile(r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")


def _check_entry(role: str, name: str, key: str, where: str) -> None:
    if role not in ROLES:
        raise KeyError_(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise KeyError_(f"{where}: name {name!r} must be 1-64 of A-Z a-z 0-9 _ . -")
    if not _Z85.fullmatch(key):
        raise KeyError_(f"{where}: {key[:12]!r}... is not a 40-character z85 CURVE public key")


def load_allowlist(path: Path) -> dict[bytes, Identity]:
    """The operator's allowlist: public key -> (role, name). Key-file metadata is never consulted."""
    if path.is_dir():
        raise KeyError_(f"{path} is a folder: key files name their own role, so they are not trusted any more. "
                        "Write an allowlist with `dgan keys authorize KEY.key --role ROLE --name NAME "
                        "--allowlist FILE` and pass that file")
    try:
        mode = path.stat().st_mode
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise KeyError_(f"cannot read the allowlist {path}: {exc}") from None
    if mode & 0o022:
        raise KeyError_(f"{path} is writable by others (mode {mode & 0o777:o}): only the operator may write the "
                        f"allowlist; chmod 600 it")
    out: dict[bytes, Identity] = {}
    names: set[tuple[str, str]] = set()
    for i, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):  # whole-line comments only: '#' is a z85 character
            continue
        parts = line.split()
        if len(parts) != 3:
            raise KeyError_(f"{path}:{i}: expected '<role> <name> <public key>', got {len(parts)} field(s)")
        role, name, key = parts
        _check_entry(role, name, key, f"{path}:{i}")
        if key.encode() in out or (role, name) in names:
            raise KeyError_(f"{path}:{i}: the key or the {role} name {name!r} is listed twice")
        out[key.encode()] = Identity(role, name)
        names.add((role, name))
    return out


def authorize(allowlist: Path, key_file: Path, role: str, name: str) -> Identity:
    """Add one public key to the operator's allowlist (created with mode 0600 if new)."""
    key = load_public(key_file).decode()
    _check_entry(role, name, key, str(key_file))
    existing = load_allowlist(allowlist) if allowlist.exists() else {}
    if key.encode() in existing:
        raise KeyError_(f"{key_file}: this key is already authorized as {existing[key.encode()]}")
    if any(i.role == role and i.name == name for i in existing.values()):
        raise KeyError_(f"{allowlist}: a {role} named {name!r} is already authorized")
    allowlist.parent.mkdir(parents=True, exist_ok=True)
    new = not allowlist.exists()
    fd = os.open(allowlist, os.O_WRONLY | os.O_APPEND | os.O_CREAT | (os.O_EXCL if new else 0), 0o600)
    with os.fdopen(fd, "a") as f:  # created 0600 from the start, never readable by others in between
        if new:
            f.write("# dgan broker allowlist, written by its operator: <role> <name> <public key>\n")
        f.write(f"{role} {name} {key}\n")
    return Identity(role, name)


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
