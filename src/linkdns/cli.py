"""Command line: CoreDNS-compatible flags, logging, event loop, signals."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence

from linkdns import __version__, nodelocal, workers
from linkdns.errors import ConfigError
from linkdns.server.listen import MAX_INFLIGHT
from linkdns.workers import Worker

log = logging.getLogger("linkdns")


class CoreDNSFormatter(logging.Formatter):
    """``[INFO] plugin/NAME: message`` like CoreDNS's clog; the log plugin's lines bare."""

    LEVELS = {"WARNING": "WARNING", "CRITICAL": "FATAL"}

    def format(self, record: logging.LogRecord) -> str:
        level = self.LEVELS.get(record.levelname, record.levelname)
        msg = record.getMessage()
        name = record.name
        if name.startswith("linkdns.plugin.") and name != "linkdns.plugin.log":
            msg = f"plugin/{name.removeprefix('linkdns.plugin.')}: {msg}"
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        return f"[{level}] {msg}"


def setup_logging(level: int = logging.INFO) -> None:
    h = logging.StreamHandler(sys.stdout)
    h.setFormatter(CoreDNSFormatter())
    root = logging.getLogger("linkdns")
    root.handlers[:] = [h]
    root.setLevel(level)
    root.propagate = False


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return n


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="linkdns", description="Node-local caching DNS forwarder (CoreDNS Corefile).")
    p.add_argument("-conf", default="Corefile", help="Corefile to load (default ./Corefile)")
    p.add_argument("-dns.port", dest="dns_port", type=int, default=53,
                   help="port for server keys without one (default 53)")
    p.add_argument("-pidfile", default="", help="write the process ID here")
    p.add_argument("-version", action="store_true", help="print the version and exit")
    p.add_argument("-validate", action="store_true",
                   help="parse the Corefile and set up every plugin, report errors, exit")
    p.add_argument("-quiet", action="store_true", help="log only errors")
    p.add_argument("-workers", type=int, default=1,
                   help="worker processes sharing the ports with SO_REUSEPORT (default 1)")
    p.add_argument("-drain", type=float, default=5.0,
                   help="seconds in-flight queries may take to finish at shutdown")
    p.add_argument("-max-inflight", dest="max_inflight", type=_positive, default=MAX_INFLIGHT,
                   help="queries in flight per listener before new UDP ones are dropped and "
                        f"TCP ones refused (default {MAX_INFLIGHT})")
    p.add_argument("-handover.socket", dest="handover", default="", metavar="PATH",
                   help="control socket for the hand-over of the listening sockets to a "
                        "successor (default: derived from the listen addresses, under "
                        "/run/linkdns, $XDG_RUNTIME_DIR/linkdns or /tmp/linkdns-UID; "
                        "'none' turns hand-over off)")
    nodelocal.add_flags(p)
    return p


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when importable, asyncio otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def validate(path: str, dns_port: int, quiet: bool = False) -> int:
    from linkdns.corefile import load_corefile
    from linkdns.server.lifecycle import Server

    try:
        blocks = load_corefile(path)
        Server.from_blocks(blocks, dns_port)
    except ConfigError as e:
        for one in e.all:
            print(str(one), file=sys.stderr)
        return 1
    except OSError as e:
        print(f"{path}: {e.strerror}", file=sys.stderr)
        return 1
    if not quiet:
        print(f"{path}: OK")
    return 0


def handover_path(flag: str, keys: list[tuple[str, int]], worker: Worker | None) -> str | None:
    """The control socket: ``-handover.socket`` (per worker: ``.wN`` appended), derived from
    the listen addresses when empty, None when ``none`` or not derivable (port 0)."""
    from linkdns.server import handover, handover_messages

    if flag == "none":
        return None
    if flag:
        return flag if worker is None else f"{flag}.w{worker.index}"
    try:
        return handover.default_path(keys, None if worker is None else worker.index)
    except (OSError, handover_messages.HandoverError) as e:
        log.warning("hand-over off: no runtime directory for its socket: %s", e)
        return None


async def serve(path: str, dns_port: int, drain: float, worker: Worker | None = None,
                node: nodelocal.NodeLocal | None = None, max_inflight: int = MAX_INFLIGHT,
                handover: str = "") -> int:
    from linkdns.corefile import load_corefile
    from linkdns.server.handover_messages import HandoverError
    from linkdns.server.lifecycle import Server

    try:
        blocks = load_corefile(path)
        server = Server.from_blocks(blocks, dns_port, reuse_port=worker is not None,
                                    drain_timeout=drain, max_inflight=max_inflight)
        server.worker = worker
        server.source = path
        if node is not None and (worker is None or worker.index == 0):
            server.registry.register(node.errors)  # as node-cache: on both metrics endpoints
        server.handover_path = handover_path(handover, server.listen_keys(), worker)
        if not handover:
            server.handover_derive = lambda keys: handover_path("", keys, worker)
    except ConfigError as e:
        for one in e.all:
            log.fatal("%s", one)
        return 1
    except OSError as e:
        log.fatal("%s: %s", path, e.strerror)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
    except (OSError, HandoverError, TimeoutError) as e:
        log.fatal("listen: %s", e)
        await server.stop()
        return 1
    if worker is not None:
        worker.ready()  # the parent does the node setup once every worker listens
    elif node is not None and not await node.start():
        await server.stop()
        return 1
    # Everything built so far lives as long as the process: keep it out of the collector's
    # generations so collections triggered by per-query garbage stay short.
    gc.freeze()
    log.info("linkdns-%s", __version__)
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(server.failed.wait())]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for t in waiters:
        t.cancel()
    log.info("shutting down")
    if node is not None and worker is None:
        await node.stop()
    await server.stop()
    if node is not None and server.handed_over:
        node.handed_over = True  # a successor serves on the node setup: never tear it down
    return server.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.version:
        print(f"linkdns-{__version__}")
        print(f"python/{sys.version.split()[0]}")
        return 0
    setup_logging(logging.ERROR if args.quiet else logging.INFO)
    try:
        node = nodelocal.from_args(args)  # None unless -localip (node-local mode)
    except ValueError as e:
        log.fatal("Error parsing flags - %s, Exiting", e)
        return 1
    if node is not None:
        node.write_corefile()
    if args.validate:
        return validate(args.conf, args.dns_port)
    if args.pidfile:
        with open(args.pidfile, "w") as f:
            f.write(f"{os.getpid()}\n")
    try:
        if node is not None and not node.begin():
            return 1
        if args.workers > 1:
            if validate(args.conf, args.dns_port, quiet=True) != 0:
                return 1  # report config errors once, not once per worker
            return workers.run(args.workers, lambda w: run_loop(args, w, node),
                               ready=node.start_blocking if node is not None else None)
        return run_loop(args, None, node)
    finally:
        if node is not None:
            node.teardown()
        if args.pidfile:
            try:
                os.unlink(args.pidfile)
            except OSError:
                pass


def run_loop(args: argparse.Namespace, worker: Worker | None,
             node: nodelocal.NodeLocal | None = None) -> int:
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(serve(args.conf, args.dns_port, args.drain, worker, node,
                                             args.max_inflight, args.handover))
    finally:
        loop.close()


if __name__ == "__main__":
    sys.exit(main())
