"""Node-local mode: linkdns takes k8s-dns-node-cache's command line (see docs/nodelocal.md).

``-localip`` turns it on: the Corefile is rendered from ``-basecorefile``, the interface holding
the local IPs and node-cache's iptables rules are set up, kept in place and torn down at exit.
"""

from __future__ import annotations

import argparse
import logging

from linkdns.nodelocal.app import NodeLocal
from linkdns.nodelocal.flags import Params, add_flags

__all__ = ["NodeLocal", "Params", "add_flags", "from_args"]

log = logging.getLogger("linkdns.nodelocal")


def from_args(args: argparse.Namespace) -> NodeLocal | None:
    """The node-local app for these flags, or None outside node-local mode (no -localip).

    Raises ValueError for flags node-cache would reject (the message is node-cache's).
    """
    if args.localip is None:
        return None
    return NodeLocal(Params.from_args(args))
