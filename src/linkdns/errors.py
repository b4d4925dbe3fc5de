"""One exception root for linkdns; the docstring of each class is its meaning."""

from __future__ import annotations


class LinkDNSError(Exception):
    """Base of every error linkdns raises on purpose."""


class ConfigError(LinkDNSError):
    """The Corefile (or a plugin's part of it) is wrong.

    Rendered as ``FILE:LINE - plugin/NAME: MESSAGE`` (CoreDNS style) so a human can act on it.
    """

    def __init__(self, msg: str, file: str = "", line: int = 0, plugin: str = "") -> None:
        self.msg = msg
        self.file = file
        self.line = line
        self.plugin = plugin
        #: every error found in one pass (the first is this one); -validate prints them all
        self.all: list[ConfigError] = [self]
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.file}:{self.line} - " if self.file else ""
        who = f"plugin/{self.plugin}: " if self.plugin else ""
        return f"{where}{who}{self.msg}"


class WireError(LinkDNSError):
    """A DNS message is malformed (too short, bad label, pointer loop, overrun)."""


class UpstreamError(LinkDNSError):
    """An upstream exchange failed (timeout, refused, garbage, closed connection)."""
