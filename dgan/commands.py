"""The one place that builds broker, generator and node command lines.

``dgan run``, the chaos and fuzz benchmarks and the process tests all start
real processes; they take their argument lists from here, so a renamed option
is renamed once.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path


def free_ports(n: int) -> list[int]:
    """``n`` ports free on loopback now."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@dataclass(frozen=True)
class Ports:
    node: int
    generator: int
    pub: int
    host: str = "127.0.0.1"

    @classmethod
    def free(cls) -> Ports:
        """Three ports free on loopback now (the OS picks them)."""
        return cls(*free_ports(3))

    @property
    def node_endpoint(self) -> str:
        return f"tcp://{self.host}:{self.node}"

    @property
    def generator_endpoint(self) -> str:
        return f"tcp://{self.host}:{self.generator}"

    @property
    def pub_endpoint(self) -> str:
        return f"tcp://{self.host}:{self.pub}"


def _common(heartbeat: float | None, log_format: str) -> list[str]:
    return [*(["--heartbeat", str(heartbeat)] if heartbeat is not None else []), "--log-format", log_format]


def broker_args(ports: Ports, *, record: Path | None = None, heartbeat: float | None = None,
                log_format: str = "plain", extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    return ["broker", *(["--host", ports.host] if ports.host != "127.0.0.1" else []),
            "--node-port", str(ports.node), "--generator-port", str(ports.generator),
            "--pub-port", str(ports.pub), *(["--record", str(record)] if record is not None else []),
            *_common(heartbeat, log_format), *extra]


def generator_args(ports: Ports, out: Path, steps: int, *, image_size: int | None = None,
                   g_width: int | None = None, d_width: int | None = None, resume: bool = False,
                   synthesize: bool = True, checkpoint_every: int | None = None, sample_every: int | None = None,
                   heartbeat: float | None = None, log_format: str = "plain",
                   extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    opt = [("--image-size", image_size), ("--g-width", g_width), ("--d-width", d_width),
           ("--checkpoint-every", checkpoint_every), ("--sample-every", sample_every)]
    return ["generator", "--broker", ports.generator_endpoint, "--out", str(out), "--steps", str(steps),
            *[a for k, v in opt if v is not None for a in (k, str(v))],
            *(["--resume"] if resume else []), *([] if synthesize else ["--no-synthesize"]),
            *_common(heartbeat, log_format), *extra]


def node_args(ports: Ports, name: str, data: Path | str, *, image_size: int | None = None,
              batch_size: int | None = None, heartbeat: float | None = None, log_format: str = "plain",
              extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    opt = [("--image-size", image_size), ("--batch-size", batch_size)]
    return ["node", "--name", name, "--broker", ports.node_endpoint, "--data", str(data),
            *[a for k, v in opt if v is not None for a in (k, str(v))], *_common(heartbeat, log_format), *extra]
