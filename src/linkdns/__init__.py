"""linkdns: a node-local caching DNS forwarder configured by a CoreDNS Corefile."""

__version__ = "0.1.0"
