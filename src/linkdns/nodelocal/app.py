"""Node-local mode's lifecycle around the server (node-cache's CacheApp).

1. :meth:`NodeLocal.write_corefile` -- render ``-basecorefile`` (+ kube-dns ConfigMap) to ``-conf``.
2. :meth:`NodeLocal.begin` -- before the listeners bind to the local IPs: take the node lock
   (shared.py) and create the interface, or adopt the one there.
3. :meth:`NodeLocal.start` -- once the server listens: the iptables (and ebtables) rules,
   adopted where present in either of node-cache's forms (node-cache too adds them only once
   CoreDNS runs); node-cache's metrics endpoint; a thread that every ``-syncinterval`` puts
   back missing rules, interface and addresses, and every 10 s re-renders ``-conf`` when the
   base Corefile or the kube-dns ConfigMap changed (the ``reload`` plugin then swaps it in).
   With ``-workers`` the parent does this once every worker listens.
4. :meth:`NodeLocal.teardown` -- at exit, unless ``-skipteardown``, and only by the last
   instance out: after a served run, delete every rule and the interface; after a failed
   start, only what this instance created.

Start-up failures (a missing ``ip``/``iptables``, permission denied) are logged as FATAL and the
process exits 1; failures in the periodic sync are logged, counted in
``coredns_nodecache_setup_errors_total`` and retried, as node-cache does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Mapping

from prometheus_client import CollectorRegistry

from linkdns.nodelocal.flags import Params
from linkdns.nodelocal.metrics import ERRORTYPES, MetricsEndpoint, SetupErrors
from linkdns.nodelocal.netif import CommandError, Interface, LinkAddError, missing_tools
from linkdns.nodelocal.rules import (
    EBTables,
    Found,
    IPTables,
    Rule,
    broute_rules,
    iptables_cmd,
    is_lock_error,
    node_cache_rules,
)
from linkdns.nodelocal.shared import NodeLock
from linkdns.nodelocal.template import (
    KubeDNSConfig,
    cluster_dns_ip,
    parse_kubedns,
    read_config_dir,
    render,
    service_env,
    write_atomic,
)

log = logging.getLogger("linkdns.nodelocal")

#: node-cache's DefaultConfigSyncPeriod (base Corefile) and kube-dns's ConfigPeriod.
CONFIG_SYNC_PERIOD = 10.0


class NodeLocal:
    def __init__(self, params: Params, environ: Mapping[str, str] | None = None) -> None:
        self.p = params
        env = os.environ if environ is None else environ
        self.cluster_dns = cluster_dns_ip(params.upstream_svc, env)
        if self.cluster_dns is None:
            name = service_env(params.upstream_svc)
            log.warning("Unable to lookup IP address of Upstream service %s, env $%s `%s`",
                        params.upstream_svc, name, env.get(name, ""))
        self.iface = Interface(params.interface, params.local_ips, params.ipv6)
        self.iptables = IPTables(params.ipv6)
        self.rules = node_cache_rules(params.local_ips, params.local_port, params.health_port)
        self.ebtables = EBTables()
        self.broute = broute_rules(params.local_ips, params.ipv6) if params.setup_ebtables else []
        self.errors = SetupErrors(ERRORTYPES + (("ebtables",) if params.setup_ebtables else ()))
        self.registry = CollectorRegistry()
        self.registry.register(self.errors)
        self.metrics = MetricsEndpoint(params.metrics_address, self.registry)
        self.lock = NodeLock(params.lockfile)
        self.kubedns = KubeDNSConfig()
        self._kubedns_seen: dict[str, str] | None = None
        self._base_seen: str | None = None
        self._lock = threading.Lock()  # one networking pass at a time; none after teardown
        self._closed = False
        self._began = False  # the node lock is held: teardown has something to decide
        self._served = False  # start() succeeded: the last one out removes everything
        #: this instance handed its sockets to a successor (set by the server): no teardown,
        #: even where the node lock could not tell (no usable lock file)
        self.handed_over = False
        self._added: list[tuple[IPTables | EBTables, Rule]] = []  # rules this process inserted
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ Corefile

    def write_corefile(self) -> bool:
        """Render and write ``-conf`` if the base Corefile or the ConfigMap changed since the
        last call. True when a file was written. Errors are logged (node-cache keeps going)."""
        try:
            with open(self.p.base_corefile, encoding="utf-8") as f:
                base = f.read()
        except OSError as e:
            log.error("Failed to read node-cache coreFile %s - %s", self.p.base_corefile,
                      e.strerror)
            self.errors.inc("configmap")
            return False
        data: dict[str, str] | None = None
        if self.p.kubedns_cm:
            try:
                data = read_config_dir(self.p.kubedns_cm)
            except (OSError, ValueError) as e:
                log.error("Failed to sync kube-dns config directory %s, err: %s",
                          self.p.kubedns_cm, e)
        if data is not None and data != self._kubedns_seen:
            self._kubedns_seen = data
            try:
                self.kubedns = parse_kubedns(data)
            except ValueError as e:
                log.error("Invalid kube-dns configuration, ignoring update: %s", e)
                self.errors.inc("configmap")
            else:
                self._base_seen = None  # force a render
        if base == self._base_seen:
            return False
        self._base_seen = base
        text, warnings = render(base, self.kubedns, self.p.local_ips, self.p.local_port,
                                self.cluster_dns)
        for w in warnings:
            log.warning("%s", w)
        try:
            with open(self.p.corefile, encoding="utf-8") as f:
                if f.read() == text:
                    return False
        except OSError:
            pass
        try:
            write_atomic(self.p.corefile, text)
        except OSError as e:
            log.error("Failed to write config file %s - err %s", self.p.corefile, e)
            self.errors.inc("configmap")
            return False
        log.info("Updated Corefile with %d custom stubdomains and upstream servers %s",
                 len(self.kubedns.stub_domains),
                 " ".join(self.kubedns.upstream_nameservers) or "/etc/resolv.conf")
        log.info("Using config file:\n%s", text)
        return True

    # ---------------------------------------------------------------- networking

    def preflight(self) -> bool:
        want = (["ip"] if self.p.setup_interface else []) + \
            ([iptables_cmd(self.p.ipv6)] if self.p.setup_iptables else []) + \
            (["ebtables"] if self.p.setup_ebtables else [])
        missing = missing_tools(want)
        for cmd in missing:
            pkg = {"ip": "iproute2", "ebtables": "ebtables"}.get(cmd, "iptables")
            log.critical("nodelocal: the %r command (package %s) is not installed or not in PATH",
                         cmd, pkg)
        return not missing

    def begin(self) -> bool:
        """At start-up, before the listeners bind: check the commands, take the node lock, set
        up (or adopt) the interface. False (logged as FATAL) on failure."""
        if not self.preflight():
            return False
        if self.p.setup_interface or self._tables():
            self.lock.acquire()  # (nothing to share when nothing is set up)
        self._began = True  # from here on, teardown has something to decide
        if not self.p.setup_interface:
            return True
        try:
            with self._lock, self.lock.networking():
                for msg in self.iface.ensure():
                    log.info("%s", msg)
        except CommandError as e:
            self._count_interface_error(e)
            log.critical("nodelocal: failed to set up interface %s: %s", self.p.interface, e)
            return False
        if not self.iface.created and not self.iface.added:
            log.info("Adopted interface - %s", self.p.interface)
        return True

    def _count_interface_error(self, e: CommandError) -> None:
        if isinstance(e, LinkAddError):
            self.errors.inc("interface_add")
        self.errors.inc("interface_check")  # node-cache counts a failed add as both

    def _count_rule_error(self, table: IPTables | EBTables, e: CommandError) -> None:
        if isinstance(table, EBTables):
            self.errors.inc("ebtables")
        else:
            self.errors.inc("iptables_lock" if is_lock_error(e) else "iptables")

    def _tables(self) -> list[tuple[IPTables | EBTables, list[Rule]]]:
        out: list[tuple[IPTables | EBTables, list[Rule]]] = []
        if self.p.setup_iptables:
            out.append((self.iptables, self.rules))
        if self.broute:
            out.append((self.ebtables, self.broute))
        return out

    def _setup_rules(self) -> None:
        adopted = 0
        with self._lock, self.lock.networking():
            if self._closed:
                return
            for table, rules in self._tables():
                for rule in rules:
                    try:
                        found = table.ensure(rule)
                    except CommandError as e:
                        self._count_rule_error(table, e)
                        raise
                    if found is Found.ADDED:
                        self._added.append((table, rule))
                        log.info("Added nodelocaldns rule - %s", rule)
                    elif found is Found.OLDER:
                        adopted += 1
                        log.info("Adopted nodelocaldns rule in node-cache's older form "
                                 "(without comment) - %s", rule)
                    else:
                        adopted += 1
        if adopted:
            log.info("Adopted %d nodelocaldns rules already in place", adopted)

    def sync_networking(self) -> None:
        """One periodic pass: put back whatever is missing; errors are logged and counted."""
        with self._lock, self.lock.networking():
            if self._closed:
                return
            for table, rules in self._tables():
                for rule in rules:
                    try:
                        if table.ensure(rule) is Found.ADDED:
                            log.info("Added back nodelocaldns rule - %s", rule)
                    except CommandError as e:
                        self._count_rule_error(table, e)
                        if is_lock_error(e):
                            log.info("Error checking/adding iptables rule %s, due to xtables "
                                     "lock in use, retrying in %gs", rule, self.p.sync_interval)
                        else:
                            log.error("Error checking/adding rule %s - %s", rule, e)
            if self.p.setup_interface:
                try:
                    for msg in self.iface.ensure():
                        log.info("%s", msg)
                except CommandError as e:
                    self._count_interface_error(e)
                    log.error("Error checking interface %s - %s", self.p.interface, e)

    def start_blocking(self) -> bool:
        """Once the server listens (every worker, with -workers): add the rules, serve
        node-cache's metrics, start the sync thread. False (logged as FATAL) on failure."""
        try:
            self._setup_rules()
        except CommandError as e:
            log.critical("nodelocal: failed to set up rules: %s", e)
            return False
        with self._lock:
            if self._closed:  # exiting already (with -workers: stopped while setting up)
                return False
            self._served = True
        self.metrics.start()
        log.info("Node setup done - interface %s, %d rules",
                 self.p.interface if self.p.setup_interface else "(not set up)",
                 sum(len(rules) for _, rules in self._tables()))
        self._thread = threading.Thread(target=self._background, name="nodelocal-sync",
                                        daemon=True)
        self._thread.start()
        return True

    async def start(self) -> bool:
        return await asyncio.to_thread(self.start_blocking)

    def _background(self) -> None:
        now = time.monotonic()
        next_sync, next_conf = now + self.p.sync_interval, now + CONFIG_SYNC_PERIOD
        while not self._stop.wait(max(0.0, min(next_sync, next_conf) - time.monotonic())):
            now = time.monotonic()
            try:
                if now >= next_sync:
                    self.sync_networking()
                    next_sync = time.monotonic() + self.p.sync_interval
                if now >= next_conf:
                    self.write_corefile()
                    next_conf = time.monotonic() + CONFIG_SYNC_PERIOD
            except Exception:
                log.exception("nodelocal: periodic sync failed")

    def stop_blocking(self) -> None:
        """Stop the sync thread (waits for a pass in progress) and the metrics endpoint."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.metrics.close()

    async def stop(self) -> None:
        await asyncio.to_thread(self.stop_blocking)

    def teardown(self) -> None:
        """At exit. Unless -skipteardown, the last instance out removes every rule (both
        forms) and the interface after a served run, or only what it created itself after a
        failed start; an instance leaving others serving removes nothing."""
        self.stop_blocking()
        with self._lock:
            self._closed = True
        if not self._began:
            return
        try:
            if self.p.skip_teardown:
                return
            if not self.lock.last_out():
                log.info("Leaving interface and rules in place: another instance is serving")
                return
            if self.handed_over:
                log.info("Leaving interface and rules in place: handed over to a successor")
                return
            if self._served:
                log.info("Tearing down")
                self._remove_all()
            elif self._added or self.iface.created or self.iface.added:
                log.info("Tearing down what this instance set up")
                self._undo_own()
        finally:
            self.lock.release()

    def _remove_all(self) -> None:
        # node-cache's order: rules first, then the interface.
        for table, rules in self._tables():
            for rule in rules:
                try:
                    table.delete(rule)
                except CommandError as e:
                    self._count_rule_error(table, e)
                    log.error("Failed deleting rule %s, error - %s", rule, e)
        if self.p.setup_interface:
            try:
                if self.iface.remove():
                    log.info("Removed interface - %s", self.p.interface)
            except CommandError as e:
                log.error("Failed to remove interface %s - %s", self.p.interface, e)

    def _undo_own(self) -> None:
        for table, rule in reversed(self._added):
            try:
                table.delete(rule)
            except CommandError as e:
                log.error("Failed deleting rule %s, error - %s", rule, e)
        try:
            for msg in self.iface.undo():
                log.info("%s", msg)
        except CommandError as e:
            log.error("Failed to remove interface %s - %s", self.p.interface, e)
