"""Errors raised by meshd.

Every error subclasses :class:`MeshError`. The split follows h11: *local*
errors mean the caller misused the API (bad argument, metadata too large),
*remote* errors mean a peer sent something we cannot accept. Bytes from the
network never raise anything but :class:`BadPacket`, which the core turns
into a counter and a ``PacketRejected`` event instead of a crash.
"""

from __future__ import annotations

__all__ = [
    "BadPacket",
    "ConfigError",
    "LocalProtocolError",
    "MeshError",
    "MetadataTooLarge",
    "RemoteProtocolError",
]


class MeshError(Exception):
    """Base class of every error meshd raises on purpose."""


class ConfigError(MeshError):
    """A configuration value is missing, of the wrong type or out of range."""


class LocalProtocolError(MeshError):
    """This node was asked to do something the protocol does not allow."""


class MetadataTooLarge(LocalProtocolError):
    """Node metadata (tags) exceeds the configured size cap."""


class RemoteProtocolError(MeshError):
    """A peer sent a well-formed message that breaks the protocol's rules."""


class BadPacket(MeshError):
    """Bytes from the network could not be decoded; drop them and count."""
