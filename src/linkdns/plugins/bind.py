"""bind: choose the addresses (or interfaces) a server block listens on."""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from dataclasses import dataclass, field

from linkdns.corefile import Directive
from linkdns.errors import ConfigError
from linkdns.plugin import Env, PluginSpec, SetupPlugin, arg_count_error, err, register


@dataclass
class BindConfig:
    addrs: list[str]
    excepts: list[str] = field(default_factory=list)


def interface_addrs(name: str) -> list[str]:
    """IPv4 (ioctl) and IPv6 (/proc/net/if_inet6) addresses of a network interface."""
    out: list[str] = []
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        req = struct.pack("256s", name.encode()[:15])
        res = fcntl.ioctl(s.fileno(), 0x8915, req)  # SIOCGIFADDR
        out.append(socket.inet_ntoa(res[20:24]))
    except OSError:
        pass
    finally:
        s.close()
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and parts[5] == name:
                    addr = ipaddress.IPv6Address(bytes.fromhex(parts[0]))
                    if not addr.is_link_local:
                        out.append(str(addr))
    except OSError:
        pass
    return out


def _is_addr(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def parse(d: Directive) -> BindConfig:
    if not d.args:
        raise arg_count_error(d)
    cfg = BindConfig(addrs=[])
    names = {n for _, n in socket.if_nameindex()}
    for a in d.args:
        if _is_addr(a):
            cfg.addrs.append(str(ipaddress.ip_address(a)))
        elif a in names:
            cfg.addrs.extend(interface_addrs(a))
        else:
            raise err(d, f"not a valid IP address or interface name: {a!r}")
    for sub in d.block or []:
        if sub.name != "except" or not sub.args:
            raise ConfigError(f"unknown property '{sub.name}'", sub.file, sub.line, "bind")
        for a in sub.args:
            if not _is_addr(a):
                raise ConfigError(f"not a valid IP address: {a!r}", sub.file, sub.line, "bind")
            cfg.excepts.append(str(ipaddress.ip_address(a)))
    cfg.addrs = [a for i, a in enumerate(cfg.addrs)
                 if a not in cfg.excepts and a not in cfg.addrs[:i]]
    if not cfg.addrs:
        raise err(d, "no address left to bind to")
    return cfg


class Bind(SetupPlugin):
    name = "bind"


def build(cfg: BindConfig, env: Env) -> Bind:
    env.addrs = list(cfg.addrs)
    return Bind()


register(PluginSpec("bind", parse, build))
