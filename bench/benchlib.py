"""Shared helpers for the linkdns benchmark harness (stdlib only).

Everything here talks to 127.0.0.1 only. Every process started goes through
``ProcessRegistry`` so it lives in its own process group and is killed (group
and all) by ``stop_all()``, which the scripts call from ``finally``.
"""

from __future__ import annotations

import os
import random
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
SBIN_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"]
)

# tool -> Debian package that provides it
APT_PACKAGE: dict[str, str] = {
    "nsd": "nsd",
    "unbound": "unbound",
    "dnsmasq": "dnsmasq",
    "dnsperf": "dnsperf",
    "taskset": "util-linux",
}

LOOPBACK = "127.0.0.1"


class Abort(Exception):
    """Raised from signal handlers (SIGTERM/SIGHUP/whole-run alarm) to unwind into finally."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- tools


def which(tool: str) -> str | None:
    return shutil.which(tool, path=SBIN_PATH)


def missing_message(tool: str) -> str:
    pkg = APT_PACKAGE.get(tool, tool)
    return f"'{tool}' not found in PATH or /usr/sbin: install it with `apt-get install {pkg}`"


def require_tools(tools: Iterable[str]) -> dict[str, str]:
    """Return tool -> absolute path; exit with a clear message when one is missing."""
    found: dict[str, str] = {}
    missing: list[str] = []
    for t in tools:
        p = which(t)
        if p is None:
            missing.append(t)
        else:
            found[t] = p
    if missing:
        for t in missing:
            log(f"ERROR: {missing_message(t)}")
        raise SystemExit(2)
    return found


def tool_version(path: str, args: Sequence[str]) -> str:
    try:
        out = subprocess.run([path, *args], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout + "\n" + out.stderr).strip()
    for line in text.splitlines():
        if re.search(r"\d+\.\d+", line) and "version" in line.lower():
            return line.strip()
    for line in text.splitlines():
        if re.search(r"\d+\.\d+", line):
            return line.strip()
    return "?"


def cpu_available(cpu: str | None) -> bool:
    if cpu is None or cpu == "":
        return False
    try:
        wanted = {int(c) for c in cpu.split(",")}
    except ValueError:
        return False
    return wanted <= os.sched_getaffinity(0)


def pin(taskset: str | None, cpu: str | None) -> list[str]:
    if taskset and cpu_available(cpu):
        assert cpu is not None
        return [taskset, "-c", cpu]
    return []


# --------------------------------------------------------------------------- signals


def install_signal_handlers(max_total_s: float) -> None:
    """SIGTERM/SIGHUP and the whole-run alarm raise Abort so `finally` cleans up."""

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        raise Abort(f"received {signal.Signals(signum).name}")

    def on_alarm(_signum: int, _frame: FrameType | None) -> None:
        raise Abort(f"whole-run time limit of {max_total_s:.0f}s reached")

    # Ctrl-C -> KeyboardInterrupt even when started with SIGINT ignored (e.g. `cmd &` in sh)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max(1, int(max_total_s)))


def quiet_signals_for_cleanup() -> None:
    signal.alarm(0)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)


# --------------------------------------------------------------------------- ports


def port_free(port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


class PortAllocator:
    """Hands out ports free on 127.0.0.1 (UDP and TCP), starting at a preferred one."""

    def __init__(self, base: int) -> None:
        self.next = base
        self.used: set[int] = set()

    def take(self, preferred: int | None = None) -> int:
        if preferred is not None and preferred not in self.used and port_free(preferred):
            self.used.add(preferred)
            return preferred
        for _ in range(2000):
            p = self.next
            self.next += 1
            if p > 65535:
                break
            if p not in self.used and port_free(p):
                self.used.add(p)
                return p
        raise RuntimeError("no free port found on 127.0.0.1")


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    cmd: list[str]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output_tail(self, lines: int = 15) -> str:
        chunks: list[str] = []
        for p in (self.stderr_path, self.stdout_path):
            try:
                data = p.read_bytes()[-8000:].decode("utf-8", "replace")
            except OSError:
                continue
            tail = data.strip().splitlines()[-lines:]
            if tail:
                chunks.append("\n".join(tail))
        return "\n".join(chunks) if chunks else "(no output)"


class ProcessRegistry:
    """Starts processes in their own session/process group and guarantees they get stopped."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[Proc] = []
        self.counter = 0

    def start(
        self, name: str, cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> Proc:
        self.counter += 1
        out = self.logdir / f"{self.counter:03d}-{name}.out"
        err = self.logdir / f"{self.counter:03d}-{name}.err"
        with out.open("wb") as fo, err.open("wb") as fe:
            popen = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=fo,
                stderr=fe,
                start_new_session=True,
                env=env,
                cwd=str(cwd) if cwd else None,
            )
        proc = Proc(name, popen, out, err, cmd)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, grace_s: float = 3.0) -> None:
        pgid = proc.pid  # leader of its own session => pgid == pid
        if group_exists(pgid):
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            proc.popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + grace_s
        while group_exists(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if group_exists(pgid) or proc.popen.poll() is None:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log(f"WARNING: {proc.name} (pid {pgid}) did not die after SIGKILL")
        # children reparented to init linger as zombies for a moment; wait them out so a
        # `pgrep` right after the run comes back empty
        deadline = time.monotonic() + 3.0
        while group_pids(pgid, zombies=True) and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            try:
                self.stop(proc)
            except Exception as exc:  # keep stopping the others
                log(f"WARNING: stopping {proc.name}: {exc}")

    def leftovers(self) -> list[int]:
        return [p.pid for p in self.procs if group_exists(p.pid)]


def clean_up(registry: ProcessRegistry, workdir: Path | str, keep: bool) -> None:
    """End of a run, whatever happened: stop every process group, keep or remove the work dir."""
    quiet_signals_for_cleanup()
    registry.stop_all()
    left = registry.leftovers()
    if left:
        log(f"WARNING: process groups still alive: {left}")
    if keep:
        log(f"work dir kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie leader still "exists"; check for a live member
    return bool(group_pids(pgid))


def run_bounded(
    registry: ProcessRegistry, name: str, cmd: list[str], timeout_s: float
) -> tuple[int, str, float, float]:
    """Run cmd to completion (killed at timeout_s). Returns (rc, stdout, wall_s, cpu_s)."""
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = registry.start(name, cmd)
    try:
        rc = proc.popen.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        log(f"WARNING: {name} exceeded {timeout_s:.0f}s, killing it")
        registry.stop(proc)
        rc = -9
    finally:
        if proc in registry.procs:
            registry.stop(proc)
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    out = proc.stdout_path.read_text("utf-8", "replace")
    err = proc.stderr_path.read_text("utf-8", "replace")
    return rc, out + ("\n" + err if err.strip() else ""), wall, cpu


# --------------------------------------------------------------------------- /proc

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return data[data.rfind(")") + 2 :].split()


def group_pids(pgid: int, zombies: bool = False) -> list[int]:
    pids: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        f = _stat_fields(int(entry))
        if f is None or len(f) < 13:
            continue
        if int(f[2]) == pgid and (zombies or f[0] != "Z"):
            pids.append(int(entry))
    return pids


def group_cpu_seconds(pgid: int) -> float:
    """utime+stime summed over the live members of the process group."""
    total = 0
    for pid in group_pids(pgid):
        f = _stat_fields(pid)
        if f is not None:
            total += int(f[11]) + int(f[12])
    return total / CLK_TCK


def group_run_wait_seconds(pgid: int) -> tuple[float, float]:
    """(on-CPU, runnable-but-waiting-for-a-CPU) seconds summed over every thread of the
    process group, from /proc/PID/task/TID/schedstat (nanoseconds). The second figure is
    the time the server was ready to run while something else had its core."""
    run = wait = 0
    for pid in group_pids(pgid):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                f = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
            except OSError:
                continue
            if len(f) >= 2:
                run += int(f[0])
                wait += int(f[1])
    return run / 1e9, wait / 1e9


def group_memory_kib(pgid: int) -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS) and Pss summed over the process group, in KiB."""
    mem = {"rss_kib": 0, "hwm_kib": 0, "pss_kib": 0, "processes": 0}
    for pid in group_pids(pgid):
        mem["processes"] += 1
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                mem["rss_kib"] += int(line.split()[1])
            elif line.startswith("VmHWM:"):
                mem["hwm_kib"] += int(line.split()[1])
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    mem["pss_kib"] += int(line.split()[1])
        except OSError:
            pass
    return mem


def cpu_times() -> dict[str, tuple[int, int, int]]:
    """Per CPU from /proc/stat: (busy, total, steal) jiffies; busy includes irq/softirq."""
    out: dict[str, tuple[int, int, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if not line.startswith("cpu"):
            continue
        parts = line.split()
        vals = [int(x) for x in parts[1:]]
        user, nice, system, idle, iowait, irq, softirq = vals[:7]
        steal = vals[7] if len(vals) > 7 else 0
        busy = user + nice + system + irq + softirq
        out[parts[0]] = (busy, busy + idle + iowait + steal, steal)
    return out


def busy_pct(
    before: dict[str, tuple[int, int, int]], after: dict[str, tuple[int, int, int]], cpus: str
) -> float | None:
    """Busy % (user+sys+irq+softirq) of the listed CPUs ('' = all) between two snapshots."""
    keys = [f"cpu{c}" for c in cpus.split(",")] if cpus else ["cpu"]
    busy = total = 0
    for k in keys:
        if k in before and k in after:
            busy += after[k][0] - before[k][0]
            total += after[k][1] - before[k][1]
    return 100.0 * busy / total if total else None


def steal_pct(
    before: dict[str, tuple[int, int, int]], after: dict[str, tuple[int, int, int]]
) -> float | None:
    total = after["cpu"][1] - before["cpu"][1]
    return 100.0 * (after["cpu"][2] - before["cpu"][2]) / total if total else None


def udp_drop_counters() -> dict[str, int]:
    """System-wide UDP RcvbufErrors/InErrors from /proc/net/snmp (drops at full sockets)."""
    lines = [
        x.split() for x in Path("/proc/net/snmp").read_text().splitlines() if x.startswith("Udp:")
    ]
    if len(lines) < 2:
        return {}
    d = dict(zip(lines[0][1:], (int(v) for v in lines[1][1:]), strict=False))
    return {k: d.get(k, 0) for k in ("InErrors", "RcvbufErrors", "SndbufErrors")}


def udp_port_drops(ports: Iterable[int]) -> dict[int, int]:
    """Per-socket `drops` from /proc/net/udp for sockets bound to 127.0.0.1:PORT (listeners)."""
    want = {f"0100007F:{p:04X}": p for p in ports}
    out = {p: 0 for p in want.values()}
    try:
        lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        f = line.split()
        if len(f) >= 13 and f[1] in want and f[2] == "00000000:0000":
            out[want[f[1]]] += int(f[-1])
    return out


# --------------------------------------------------------------------------- DNS wire

QTYPES = {"A": 1, "NS": 2, "SOA": 6, "PTR": 12, "AAAA": 28}


def build_query(name: str, qtype: str = "A", qid: int = 0x1234, edns: bool = False) -> bytes:
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 1 if edns else 0)
    qname = b"".join(
        bytes([len(label)]) + label.encode("ascii") for label in name.rstrip(".").split(".")
    )
    msg = header + qname + b"\x00" + struct.pack("!HH", QTYPES[qtype], 1)
    if edns:
        msg += b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
    return msg


@dataclass
class Answer:
    rcode: int
    tc: bool
    ancount: int
    nscount: int


RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def query(
    port: int, name: str, qtype: str = "A", timeout_s: float = 0.5, edns: bool = False
) -> Answer | None:
    qid = random.randrange(65536)
    msg = build_query(name, qtype, qid, edns)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout_s)
        try:
            s.sendto(msg, (LOOPBACK, port))
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                data = s.recv(65535)
                if len(data) >= 12 and struct.unpack("!H", data[:2])[0] == qid:
                    _, flags, _, an, ns, _ = struct.unpack("!HHHHHH", data[:12])
                    return Answer(flags & 0xF, bool(flags & 0x0200), an, ns)
        except (TimeoutError, OSError):
            return None
    return None


def wait_ready(
    port: int, proc: Proc | None, timeout_s: float, name: str = "host1.example.test"
) -> str | None:
    """Poll until the server answers `name` NOERROR. Returns None when ready, else an error."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            return f"exited with status {proc.popen.returncode} before answering"
        ans = query(port, name, timeout_s=0.3)
        if ans is not None:
            if ans.rcode == 0:
                return None
            last = f"answered {RCODES.get(ans.rcode, ans.rcode)}"
        time.sleep(0.1)
    return f"not ready after {timeout_s:.0f}s ({last})"


# --------------------------------------------------------------------------- zones

SOA_SERIAL = 1


def _soa(origin: str) -> str:
    return (
        f"$ORIGIN {origin}.\n$TTL 3600\n"
        f"@ 3600 IN SOA ns.example.test. hostmaster.example.test. "
        f"{SOA_SERIAL} 3600 600 86400 3600\n"
        f"@ 3600 IN NS ns.example.test.\n"
    )


def host_ip(k: int) -> str:
    return f"10.{(k >> 16) & 255}.{(k >> 8) & 255}.{k & 255}"


@dataclass
class MemoryNames:
    """Names for the 4-block memory benchmark: per block, (name, qtype) that exist / don't."""

    success: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    denial: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


def _nibbles(prefix: int, i: int) -> str:
    # fdXX:0000:...:<i> -> reversed nibble name under ip6.arpa
    full = f"fd{prefix:02x}" + "0" * 24 + f"{i:04x}"
    return ".".join(reversed(full)) + ".ip6.arpa"


def memory_names(entries: int) -> MemoryNames:
    m = MemoryNames()
    m.success["cluster.local"] = [(f"s{i}.ns.svc.cluster.local", "A") for i in range(entries)]
    m.denial["cluster.local"] = [(f"n{i}.ns.svc.cluster.local", "A") for i in range(entries)]
    m.success["in-addr.arpa"] = [
        (f"{i & 255}.{(i >> 8) & 255}.1.10.in-addr.arpa", "PTR") for i in range(entries)
    ]
    m.denial["in-addr.arpa"] = [
        (f"{i & 255}.{(i >> 8) & 255}.2.10.in-addr.arpa", "PTR") for i in range(entries)
    ]
    m.success["ip6.arpa"] = [(_nibbles(0x10, i), "PTR") for i in range(entries)]
    m.denial["ip6.arpa"] = [(_nibbles(0x20, i), "PTR") for i in range(entries)]
    m.success["."] = [(f"mem{i}.example.test", "A") for i in range(entries)]
    m.denial["."] = [(f"memnx{i}.example.test", "A") for i in range(entries)]
    return m


def write_zones(workdir: Path, hosts: int, memory_entries: int = 0) -> list[tuple[str, Path]]:
    """Write nsd zone files; returns [(zone name, path)].

    example.test: host1..hostN (1 A each; even N also 1 AAAA), big (20 A), big40 (40 A),
    *.wild (wildcard A);
    cluster.local: SOA+NS only, so anything below it is a cacheable NXDOMAIN (SOA minimum 3600).
    With memory_entries, also in-addr.arpa / ip6.arpa and existing names for the memory bench.
    """
    zones: list[tuple[str, Path]] = []
    lines = [_soa("example.test"), "ns 3600 IN A 127.0.0.1\n"]
    lines += [f"host{k} 3600 IN A {host_ip(k)}\n" for k in range(1, hosts + 1)]
    lines += [f"host{k} 3600 IN AAAA fd00::{k >> 16:x}:{k & 0xFFFF:x}\n"
              for k in range(2, hosts + 1, 2)]
    lines += [f"big 3600 IN A 10.200.0.{i}\n" for i in range(1, 21)]
    lines += [f"big40 3600 IN A 10.201.0.{i}\n" for i in range(1, 41)]
    lines.append("*.wild 3600 IN A 10.250.0.1\n")
    mem = memory_names(memory_entries) if memory_entries else None
    if mem:
        lines += [
            f"{n.removesuffix('.example.test')} 3600 IN A {host_ip(i + 1)}\n"
            for i, (n, _) in enumerate(mem.success["."])
        ]
    p = workdir / "example.test.zone"
    p.write_text("".join(lines))
    zones.append(("example.test", p))

    lines = [_soa("cluster.local")]
    if mem:
        lines += [
            f"{n}. 3600 IN A {host_ip(i + 1)}\n"
            for i, (n, _) in enumerate(mem.success["cluster.local"])
        ]
    p = workdir / "cluster.local.zone"
    p.write_text("".join(lines))
    zones.append(("cluster.local", p))

    if mem:
        for zone in ("in-addr.arpa", "ip6.arpa"):
            lines = [_soa(zone)]
            lines += [
                f"{n}. 3600 IN PTR host{i + 1}.example.test.\n"
                for i, (n, _) in enumerate(mem.success[zone])
            ]
            p = workdir / f"{zone}.zone"
            p.write_text("".join(lines))
            zones.append((zone, p))
    return zones


# --------------------------------------------------------------------------- configs

# Fallback copies of shared/peers/*.conf (used only when that directory is absent).
_EMBEDDED: dict[str, str] = {
    "nsd.conf": """server:
    ip-address: 127.0.0.1@25300
    port: 25300
    server-count: 1
    username: ""
    chroot: ""
    zonesdir: "@WORK@"
    database: ""
    zonelistfile: "@WORK@/nsd.zonelist"
    xfrdfile: "@WORK@/nsd.xfrd.state"
    xfrdir: "@WORK@"
    pidfile: "@WORK@/nsd.pid"
    logfile: "@WORK@/nsd.log"
    verbosity: 0
    hide-version: yes
    do-ip6: no
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
    ipv4-edns-size: 1232
remote-control:
    control-enable: no
""",
    "unbound.conf": """server:
    interface: 127.0.0.1@@PORT@
    port: @PORT@
    num-threads: @THREADS@
    so-reuseport: yes
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "@WORK@"
    pidfile: "@WORK@/unbound-@PORT@.pid"
    use-syslog: no
    logfile: ""
    verbosity: 0
    do-ip6: no
    do-tcp: yes
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    module-config: "iterator"
    local-zone: "test." nodefault
    domain-insecure: "test."
    msg-cache-size: 256m
    rrset-cache-size: 512m
    key-cache-size: 1m
    neg-cache-size: 16m
    num-queries-per-thread: 4096
    outgoing-range: 8192
    so-rcvbuf: 4m
    so-sndbuf: 4m
    ratelimit: 0
    ip-ratelimit: 0
    prefetch: no
    minimal-responses: yes
    qname-minimisation: no
    edns-buffer-size: 1232
    statistics-interval: 0
    extended-statistics: no
remote-control:
    control-enable: no
forward-zone:
    name: "."
    forward-addr: 127.0.0.1@25300
""",
    "dnsmasq.conf": """port=25302
listen-address=127.0.0.1
bind-interfaces
no-resolv
no-hosts
no-poll
server=127.0.0.1#25300
cache-size=100000
dns-forward-max=10000
edns-packet-max=1232
keep-in-foreground
user=root
pid-file=@WORK@/dnsmasq.pid
log-facility=@WORK@/dnsmasq.log
""",
}


def find_peers_dir(explicit: str | None) -> Path | None:
    cands = [explicit, os.environ.get("LINKDNS_PEERS_DIR")]
    cands += [str(REPO_DIR.parent / "shared" / "peers"), "/work/shared/peers"]
    for c in cands:
        if c and (Path(c) / "nsd.conf").is_file():
            return Path(c)
    return None


def load_template(peers: Path | None, name: str) -> str:
    if peers is not None and (peers / name).is_file():
        return (peers / name).read_text()
    return _EMBEDDED[name]


def render_nsd(peers: Path | None, workdir: Path, port: int, zones: list[tuple[str, Path]]) -> Path:
    t = load_template(peers, "nsd.conf").replace("@WORK@", str(workdir))
    t = re.sub(r"\b25300\b", str(port), t)
    cut = re.search(r"^zone:", t, flags=re.M)  # drop the template's zones, add ours
    if cut:
        t = t[: cut.start()]
    for name, path in zones:
        t += f'zone:\n    name: {name}\n    zonefile: "{path}"\n'
    p = workdir / "nsd.conf"
    p.write_text(t)
    return p


def render_unbound(
    peers: Path | None,
    workdir: Path,
    port: int,
    nsd_port: int,
    threads: int = 1,
    extra_server_lines: Sequence[str] = (),
) -> Path:
    t = load_template(peers, "unbound.conf")
    t = t.replace("@WORK@", str(workdir)).replace("@PORT@", str(port))
    t = t.replace("@THREADS@", str(threads))
    t = re.sub(r"forward-addr:\s*127\.0\.0\.1@\d+", f"forward-addr: 127.0.0.1@{nsd_port}", t)
    if extra_server_lines:
        t = t.replace(
            "server:\n", "server:\n" + "".join(f"    {x}\n" for x in extra_server_lines), 1
        )
    p = workdir / f"unbound-{port}.conf"
    p.write_text(t)
    return p


def render_dnsmasq(peers: Path | None, workdir: Path, port: int, nsd_port: int) -> Path:
    t = load_template(peers, "dnsmasq.conf").replace("@WORK@", str(workdir))
    t = re.sub(r"^port=\d+", f"port={port}", t, flags=re.M)
    t = re.sub(r"^server=127\.0\.0\.1#\d+", f"server=127.0.0.1#{nsd_port}", t, flags=re.M)
    p = workdir / f"dnsmasq-{port}.conf"
    p.write_text(t)
    return p


def linkdns_env(use_src: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    if use_src:
        src = str(REPO_DIR / "src")
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# --------------------------------------------------------------------------- dnsperf


@dataclass
class PerfResult:
    rc: int = 0
    sent: int = 0
    completed: int = 0
    lost: int = 0
    run_time_s: float = 0.0
    qps: float = 0.0
    avg_latency_s: float | None = None
    latency_sd_s: float | None = None
    rcodes: dict[str, int] = field(default_factory=dict)
    request_bytes: float | None = None
    response_bytes: float | None = None
    wall_s: float = 0.0
    client_cpu_s: float = 0.0
    tail: str = ""

    @property
    def loss_pct(self) -> float:
        return 100.0 * self.lost / self.sent if self.sent else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["loss_pct"] = self.loss_pct
        return d


def _num(pattern: str, text: str) -> float | None:
    m = re.search(pattern, text, flags=re.M)
    return float(m.group(1)) if m else None


def parse_dnsperf(text: str) -> PerfResult:
    r = PerfResult()
    r.sent = int(_num(r"Queries sent:\s+(\d+)", text) or 0)
    r.completed = int(_num(r"Queries completed:\s+(\d+)", text) or 0)
    r.lost = int(_num(r"Queries lost:\s+(\d+)", text) or 0)
    r.run_time_s = _num(r"Run time \(s\):\s+([\d.]+)", text) or 0.0
    r.qps = _num(r"Queries per second:\s+([\d.]+)", text) or 0.0
    r.avg_latency_s = _num(r"Average Latency \(s\):\s+([\d.]+)", text)
    r.latency_sd_s = _num(r"Latency StdDev \(s\):\s+([\d.]+)", text)
    m = re.search(r"Response codes:\s+(.*)$", text, flags=re.M)
    if m:
        for code, n in re.findall(r"([A-Z]+) (\d+)", m.group(1)):
            r.rcodes[code] = int(n)
    m = re.search(r"Average packet size:\s+request (\d+), response (\d+)", text)
    if m:
        r.request_bytes, r.response_bytes = float(m.group(1)), float(m.group(2))
    r.tail = "\n".join(text.strip().splitlines()[-4:])
    return r


def dnsperf_cmd(
    dnsperf: str,
    pin_prefix: list[str],
    port: int,
    qfile: Path,
    duration_s: float,
    clients: int,
    outstanding: int,
    rate: float | None = None,
    once: bool = False,
    verbose: bool = False,
    edns: bool = False,
    timeout_s: float = 2.0,
    buffer_kb: int = 4096,
    binary: bool = False,
) -> list[str]:
    cmd = [*pin_prefix, dnsperf, "-s", LOOPBACK, "-p", str(port), "-d", str(qfile)]
    cmd += ["-l", f"{max(duration_s, 0.5):g}", "-c", str(clients), "-q", str(outstanding)]
    cmd += ["-t", f"{timeout_s:g}"]
    if buffer_kb:
        # without this dnsperf's own sockets overflow at high rates (seen with -v) and the
        # drops show up as server "timeouts"; the kernel caps it at net.core.rmem_max
        cmd += ["-b", str(buffer_kb)]
    if rate is not None:
        cmd += ["-Q", str(max(1, int(rate)))]
    if once:
        cmd += ["-n", "1"]
    if verbose:
        cmd += ["-v"]
    if edns:
        cmd += ["-e"]
    if binary:
        cmd += ["-B"]  # wire messages (2-byte length + message): dnsperf sets only the ID
    return cmd


def run_dnsperf(
    registry: ProcessRegistry, name: str, cmd: list[str], duration_s: float, timeout_s: float
) -> tuple[PerfResult, str]:
    # hard bound: the -l limit plus the per-query timeout plus slack for start/exit
    rc, out, wall, cpu = run_bounded(registry, name, cmd, duration_s + timeout_s + 15)
    res = parse_dnsperf(out)
    res.rc, res.wall_s, res.client_cpu_s = rc, wall, cpu
    return res, out


def parse_verbose_latencies(text: str) -> tuple[list[float], int, dict[str, int]]:
    """Per-query lines of `dnsperf -v`: '> RCODE qname qtype latency'. Returns (lat, timeouts, rcodes)."""
    lats: list[float] = []
    timeouts = 0
    rcodes: dict[str, int] = {}
    for line in text.splitlines():
        if not line.startswith("> "):
            continue
        parts = line.split()
        try:
            lat = float(parts[-1])
        except (ValueError, IndexError):
            timeouts += 1
            continue
        if parts[1] == "T":
            timeouts += 1
            continue
        lats.append(lat)
        rcodes[parts[1]] = rcodes.get(parts[1], 0) + 1
    return lats, timeouts, rcodes


def percentile(sorted_vals: Sequence[float], p: float) -> float | None:
    if not sorted_vals:
        return None
    k = min(len(sorted_vals) - 1, max(0, round(p / 100.0 * (len(sorted_vals) - 1))))
    return sorted_vals[k]


def write_queries(path: Path, queries: Iterable[tuple[str, str]]) -> int:
    n = 0
    with path.open("w") as f:
        for name, qtype in queries:
            f.write(f"{name} {qtype}\n")
            n += 1
    return n


def fetch_metrics(port: int, timeout_s: float = 2.0) -> str | None:
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=timeout_s) as r:
            body: bytes = r.read()
            return body.decode("utf-8", "replace")
    except OSError:
        return None


def cache_entries_from_metrics(text: str) -> dict[str, float]:
    """Sum `*_cache_entries{type=...}` (CoreDNS name: coredns_cache_entries) per type."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:]*cache_entries)(\{[^}]*\})?\s+([0-9.eE+-]+)", line)
        if not m:
            continue
        t = re.search(r'type="([^"]*)"', m.group(2) or "")
        key = t.group(1) if t else "all"
        out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


# --------------------------------------------------------------------------- servers

PEER_SERVERS = ("unbound", "dnsmasq")
ALL_SERVERS = ("linkdns", *PEER_SERVERS)


@dataclass
class ServerLaunch:
    name: str
    port: int
    cmd: list[str]
    env: dict[str, str] | None = None
    start_timeout_s: float = 10.0
    metrics_port: int | None = None
    config_path: Path | None = None


def linkdns_single_corefile(port: int, nsd_port: int, metrics_port: int) -> str:
    return (
        f".:{port} {{\n"
        f"    bind 127.0.0.1\n"
        f"    cache 3600 {{\n"
        f"        success 65536\n"
        f"        denial 65536\n"
        f"    }}\n"
        f"    forward . 127.0.0.1:{nsd_port}\n"
        f"    prometheus 127.0.0.1:{metrics_port}\n"
        f"}}\n"
    )


def build_launch(
    name: str,
    *,
    workdir: Path,
    port: int,
    nsd_port: int,
    tools: dict[str, str],
    pin_prefix: list[str],
    peers: Path | None,
    python: str,
    use_src: bool,
    corefile_text: str | None = None,
    metrics_port: int | None = None,
    unbound_extra: Sequence[str] = (),
    start_timeout_s: float = 20.0,
) -> ServerLaunch:
    if name == "unbound":
        conf = render_unbound(peers, workdir, port, nsd_port, 1, unbound_extra)
        return ServerLaunch(
            name,
            port,
            [*pin_prefix, tools["unbound"], "-d", "-c", str(conf)],
            start_timeout_s=min(start_timeout_s, 15),
            config_path=conf,
        )
    if name == "dnsmasq":
        conf = render_dnsmasq(peers, workdir, port, nsd_port)
        return ServerLaunch(
            name,
            port,
            [*pin_prefix, tools["dnsmasq"], "-C", str(conf)],
            start_timeout_s=min(start_timeout_s, 15),
            config_path=conf,
        )
    if name == "linkdns":
        assert corefile_text is not None
        conf = workdir / f"Corefile-{port}"
        conf.write_text(corefile_text)
        return ServerLaunch(
            name,
            port,
            [*pin_prefix, python, "-m", "linkdns", "-conf", str(conf)],
            env=linkdns_env(use_src),
            start_timeout_s=start_timeout_s,
            metrics_port=metrics_port,
            config_path=conf,
        )
    raise ValueError(f"unknown server {name}")


def start_nsd(
    registry: ProcessRegistry,
    nsd: str,
    workdir: Path,
    port: int,
    zones: list[tuple[str, Path]],
    peers: Path | None,
    pin_prefix: list[str],
) -> Proc:
    conf = render_nsd(peers, workdir, port, zones)
    proc = registry.start("nsd", [*pin_prefix, nsd, "-d", "-c", str(conf)])
    err = wait_ready(port, proc, 20.0)
    if err is not None:
        logfile = workdir / "nsd.log"
        extra = logfile.read_text()[-2000:] if logfile.exists() else ""
        raise RuntimeError(f"nsd on port {port} {err}:\n{proc.output_tail()}\n{extra}")
    return proc
