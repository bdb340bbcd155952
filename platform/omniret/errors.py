"""Typed errors that name the offending input, so callers can report it and carry on."""

from __future__ import annotations


class OmniretError(Exception):
    """Base class of every error this package raises on purpose."""


class MediaError(OmniretError, ValueError):
    """An input (image, video, PDF page, text) that cannot be used, with the item and the reason.

    ``source`` names the item (a path, URI or a short description such as ``"item 3 image 0"``),
    ``reason`` says what is wrong with it in words a user can act on.
    """

    def __init__(self, source: str, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


class ConfigError(OmniretError, ValueError):
    """A configuration file or override that does not fit the schema."""
