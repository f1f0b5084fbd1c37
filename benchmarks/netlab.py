"""Hosts on one switch, as Linux network namespaces, with links shaped to a network profile.

Every host is a namespace with one veth to a bridge in a switch namespace.
Bandwidth is shaped with ``tbf`` on both ends of a host's veth (its uplink
leaves through the host end, its downlink through the switch end).  This
kernel has no ``netem`` qdisc, so latency comes from a delaying TCP relay
(``benchmarks.delay_relay``) that the caller runs on the path.  Needs root and
iproute2; :class:`NetLabUnavailable` says why when they are missing.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import uuid
from dataclasses import dataclass


class NetLabUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, or no iproute2)."""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _tc(ns: str, *args: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "tc", *args], check=True, capture_output=True)


@dataclass(frozen=True)
class Host:
    name: str
    ns: str
    addr: str
    veth: str  # the host's end
    port: str  # the switch's end

    @property
    def prefix(self) -> list[str]:
        """Run a command on this host."""
        return ["ip", "netns", "exec", self.ns]


class NetLab:
    """``with NetLab(["b", "g", "n1"]) as lab: lab.hosts["b"].addr``; everything is removed on exit,
    processes left in the namespaces included."""

    def __init__(self, names: list[str], subnet: str = "10.231.7") -> None:
        bad = [n for n in names if not re.fullmatch(r"[a-z0-9]{1,8}", n)]
        if bad or len(set(names)) != len(names) or not 0 < len(names) < 250:
            # a host's veth is named dg<tag><name>a: Linux allows 15 characters
            raise ValueError(f"host names must be distinct, 1 to 8 of [a-z0-9], at most 249 of them; got "
                             f"{bad or names}")
        self.names, self.subnet = names, subnet
        tag = uuid.uuid4().hex[:4]
        self.switch = f"dg{tag}sw"
        self._tag = tag
        self.hosts: dict[str, Host] = {}
        self._made: list[str] = []

    def __enter__(self) -> NetLab:
        try:
            _ip("netns", "add", self.switch)
        except (subprocess.CalledProcessError, FileNotFoundError) as exc:
            raise NetLabUnavailable(f"network namespaces cannot be made here ({exc}); this needs root and "
                                    "iproute2") from exc
        self._made.append(self.switch)
        try:
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
            for k, name in enumerate(self.names, start=1):
                ns = f"dg{self._tag}{name}"
                _ip("netns", "add", ns)
                self._made.append(ns)
                host = Host(name, ns, f"{self.subnet}.{k}", f"{ns}a", f"{ns}b")
                _ip("link", "add", host.veth, "type", "veth", "peer", "name", host.port)
                _ip("link", "set", host.veth, "netns", ns)
                _ip("link", "set", host.port, "netns", self.switch)
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "addr", "add", f"{host.addr}/24", "dev", host.veth)
                _ip("-n", ns, "link", "set", host.veth, "up")
                _ip("-n", self.switch, "link", "set", host.port, "master", "br0")
                _ip("-n", self.switch, "link", "set", host.port, "up")
                self.hosts[name] = host
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for ns in self._made:
            for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._made.clear()

    def shape(self, name: str, mbit: float) -> None:
        """Limit the host's link to ``mbit`` Mbit/s each way (tbf; the burst covers 5 ms and one GSO packet)."""
        host = self.hosts[name]
        burst = max(64 * 1024, int(mbit * 1e6 / 8 * 0.005))
        for ns, dev in ((host.ns, host.veth), (self.switch, host.port)):
            _tc(ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{mbit}mbit", "burst", str(burst),
                "latency", "200ms")

    def set_link(self, name: str, up: bool) -> None:
        """Cut or restore a host's link at the switch."""
        _ip("-n", self.switch, "link", "set", self.hosts[name].port, "up" if up else "down")
