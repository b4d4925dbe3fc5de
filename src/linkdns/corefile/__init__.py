"""Corefile (CoreDNS / Caddy v1 syntax) lexer and parser; pure code, no networking."""

from linkdns.corefile.keys import ServerKey, parse_server_key
from linkdns.corefile.lexer import Token, tokenize
from linkdns.corefile.parse import Directive, ServerBlock, load_corefile, parse_corefile

__all__ = [
    "Directive",
    "ServerBlock",
    "ServerKey",
    "Token",
    "load_corefile",
    "parse_corefile",
    "parse_server_key",
    "tokenize",
]
