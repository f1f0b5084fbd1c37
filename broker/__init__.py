"""The dgan ZeroMQ broker."""

from broker.broker import Broker, BrokerConfig, PeerRecord

__all__ = ["Broker", "BrokerConfig", "PeerRecord"]
