"""Node-local mode's lifecycle around the server (node-cache's CacheApp).

1. :meth:`NodeLocal.write_corefile` -- render ``-basecorefile`` (+ kube-dns ConfigMap) to ``-conf``.
2. :meth:`NodeLocal.setup_interface` -- before the listeners bind to the local IPs.
3. :meth:`NodeLocal.start` -- once the server listens: the iptables rules (node-cache too adds
   them only once CoreDNS runs), then two owned tasks: every ``-syncinterval`` put back missing
   rules, interface and addresses; every 10 s re-render ``-conf`` when the base Corefile or the
   kube-dns ConfigMap changed (the ``reload`` plugin then swaps the new configuration in).
4. :meth:`NodeLocal.stop` -- cancel the tasks; :meth:`NodeLocal.teardown` -- at exit, unless
   ``-skipteardown``: delete the interface and every rule.

Start-up failures (a missing ``ip``/``iptables``, permission denied) are logged as FATAL and the
process exits 1; failures in the periodic sync are logged and retried, as node-cache does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Mapping

from linkdns.nodelocal.flags import Params
from linkdns.nodelocal.netif import (
    CommandError,
    Interface,
    IPTables,
    is_lock_error,
    missing_tools,
    node_cache_rules,
)
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
        self.kubedns = KubeDNSConfig()
        self._kubedns_seen: dict[str, str] | None = None
        self._base_seen: str | None = None
        self._lock = threading.Lock()  # one networking pass at a time; none after teardown
        self._closed = False
        self._began = False
        self._rules_on = False  # rules are synced only once start() added them
        self._tasks: list[asyncio.Task[None]] = []

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
            return False
        log.info("Updated Corefile with %d custom stubdomains and upstream servers %s",
                 len(self.kubedns.stub_domains),
                 " ".join(self.kubedns.upstream_nameservers) or "/etc/resolv.conf")
        log.info("Using config file:\n%s", text)
        return True

    # ---------------------------------------------------------------- networking

    def preflight(self) -> bool:
        missing = missing_tools(self.p.setup_interface, self.p.setup_iptables, self.p.ipv6)
        for cmd in missing:
            pkg = "iproute2" if cmd == "ip" else "iptables"
            log.critical("nodelocal: the %r command (package %s) is not installed or not in PATH",
                         cmd, pkg)
        return not missing

    def begin(self) -> bool:
        """At start-up, before the listeners bind: check the commands, set up the interface.
        False (logged as FATAL) on failure."""
        if not self.preflight():
            return False
        self._began = True  # from here on, teardown has something to undo
        return self.setup_interface()

    def setup_interface(self) -> bool:
        if not self.p.setup_interface:
            return True
        try:
            with self._lock:
                for msg in self.iface.ensure():
                    log.info("%s", msg)
        except CommandError as e:
            log.critical("nodelocal: failed to set up interface %s: %s", self.p.interface, e)
            return False
        return True

    def _setup_rules(self) -> None:
        with self._lock:
            if self._closed:
                return
            for rule in self.rules:
                if not self.iptables.ensure(rule):
                    log.info("Added nodelocaldns rule - %s", rule)
            self._rules_on = True

    def sync_networking(self) -> None:
        """One periodic pass: put back whatever is missing; errors are logged, not raised."""
        with self._lock:
            if self._closed:
                return
            if self.p.setup_iptables and self._rules_on:
                for rule in self.rules:
                    try:
                        if not self.iptables.ensure(rule):
                            log.info("Added back nodelocaldns rule - %s", rule)
                    except CommandError as e:
                        if is_lock_error(e):
                            log.info("Error checking/adding iptables rule %s, due to xtables "
                                     "lock in use, retrying in %gs", rule, self.p.sync_interval)
                        else:
                            log.error("Error adding iptables rule %s - %s", rule, e)
            if self.p.setup_interface:
                try:
                    for msg in self.iface.ensure():
                        log.info("%s", msg)
                except CommandError as e:
                    log.error("Error checking interface %s - %s", self.p.interface, e)

    async def start(self, run_tasks: bool = True) -> bool:
        """Once the server listens: add the rules, start the sync tasks. False on failure."""
        if self.p.setup_iptables:
            try:
                await asyncio.to_thread(self._setup_rules)
            except CommandError as e:
                log.critical("nodelocal: failed to set up iptables rules: %s", e)
                return False
        if run_tasks:
            self._tasks = [asyncio.ensure_future(self._sync_loop()),
                           asyncio.ensure_future(self._config_loop())]
        return True

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.p.sync_interval)
            await asyncio.to_thread(self.sync_networking)

    async def _config_loop(self) -> None:
        while True:
            await asyncio.sleep(CONFIG_SYNC_PERIOD)
            self.write_corefile()

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
        self._tasks = []

    def teardown(self) -> None:
        """At exit: remove the interface and every rule unless -skipteardown. Waits for a
        sync pass still running in its thread; none runs after this."""
        with self._lock:
            self._closed = True
            if self.p.skip_teardown or not self._began:
                return
            log.info("Tearing down")
            if self.p.setup_interface:
                try:
                    if self.iface.remove():
                        log.info("Removed interface - %s", self.p.interface)
                except CommandError as e:
                    log.error("Failed to remove interface %s - %s", self.p.interface, e)
            if self.p.setup_iptables:
                for rule in self.rules:
                    try:
                        self.iptables.delete(rule)
                    except CommandError as e:
                        log.error("Failed to delete iptables rule %s - %s", rule, e)
