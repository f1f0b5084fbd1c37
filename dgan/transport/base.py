"""The two interfaces training code sees."""

from __future__ import annotations

from typing import Protocol

from dgan.protocol import Message


class LinkClosed(RuntimeError):
    """The link can carry nothing more (closed, or its I/O failed: the reason is chained)."""


class NodeLink(Protocol):
    """A discriminator node's connection to the generator."""

    name: str

    def send(self, msg: Message) -> bool:
        """Send to the generator; False if it could not leave this process (nothing was sent)."""

    def recv(self, timeout: float) -> Message | None:
        """The next message for this node, or None after ``timeout`` seconds."""

    def close(self) -> None: ...


class GeneratorLink(Protocol):
    """The generator's connection to every node."""

    def send(self, to: str, msg: Message) -> bool:
        """Send to one node, by name; False if it could not leave this process."""

    def broadcast(self, msg: Message) -> bool:
        """Send to every node and monitor; False if it could not leave this process."""

    def recv(self, timeout: float) -> tuple[str, Message] | None:
        """The next (node name or "" for the broker, message), or None after ``timeout``."""

    def close(self) -> None: ...
