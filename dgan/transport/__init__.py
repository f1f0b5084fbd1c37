"""Transports: how training code sends and receives messages.

Training logic talks to :class:`NodeLink` / :class:`GeneratorLink` only; the
ZeroMQ implementation goes through the broker, the in-process one through
queues, so tests and simulations run the real training code.
"""

from dgan.transport.base import GeneratorLink, NodeLink

__all__ = ["GeneratorLink", "NodeLink"]
