"""Hand-over of the listening sockets to a successor: the restart drill and its guards.

Real daemons on loopback; a client at 500 queries/s (1 s timeout, no retry) while a second
instance takes the sockets over and the first gets SIGTERM (a) or SIGKILL (b).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.message
import dns.rcode
import pytest
from drill import Daemon, Load, Result, SlowUpstream, alive, corefile
from fakeupstream import FakeUpstream, Reply, a_records
from harness import free_port, http_get, query

from linkdns.config import build_sites
from linkdns.corefile import parse_corefile
from linkdns.server import handover, handover_messages
from linkdns.server.lifecycle import Server

UPSTREAM_DELAY = 0.02  # every miss is in flight this long: there is always some in flight


@pytest.fixture
def drill_up() -> Iterator[SlowUpstream]:
    """The drill's upstream, answering after UPSTREAM_DELAY, in a process of its own."""
    with SlowUpstream(UPSTREAM_DELAY) as u:
        yield u


@pytest.fixture
def conf(tmp_path: Path, drill_up: SlowUpstream) -> Iterator[tuple[Path, int, int]]:
    port, ready = free_port(), free_port()
    yield corefile(tmp_path / "Corefile", port, drill_up.addr, ready, free_port()), port, ready


def start(conf: Path, *args: str) -> Daemon:
    d = Daemon("-conf", str(conf), *args)
    d.wait_for("linkdns-")
    return d


def stop_all(*daemons: Daemon) -> None:
    for d in daemons:
        if d.p.poll() is None:
            d.stop(signal.SIGKILL)


def overlap(conf: Path, port: int, proto: str, sig: int, drained: bool = False
            ) -> tuple[Result, Daemon, Daemon, float]:
    """The drill: load on, a second instance takes over, ``sig`` to the first, load on."""
    old = start(conf)
    new: Daemon | None = None
    try:
        with Load(port, proto, rate=500) as load:
            time.sleep(1.0)
            launched = time.monotonic()
            new = start(conf)
            new.wait_for("hand-over: serving")
            serving = time.monotonic()
            if sig == signal.SIGTERM:
                old.wait_for("stopped reading")
                time.sleep(0.3)
            elif drained:
                old.wait_for("hand-over: drained")
            killed = time.monotonic()
            rc = old.stop(sig)
            time.sleep(1.5)
        result = load.result
    except BaseException:
        stop_all(old, *([new] if new else []))
        raise
    print(f"\n{proto} {signal.Signals(sig).name}: {result}")
    if result.failed_at:  # when, from the successor's launch (the log is read late under load)
        print(f"  successor serving at +{serving - launched:.2f}s, signal at "
              f"+{killed - launched:.2f}s, failures sent at "
              f"{sorted(round(t - launched, 2) for t in result.failed_at)[:20]}")
    assert rc == (0 if sig == signal.SIGTERM else -signal.SIGKILL), old.out
    return result, old, new, killed


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_drill_a_sigterm_after_handover_loses_nothing(
        conf: tuple[Path, int, int], drill_up: SlowUpstream, proto: str) -> None:
    path, port, ready = conf
    result, old, new, _ = overlap(path, port, proto, signal.SIGTERM)
    try:
        assert result.sent >= 1000, result  # ~2.8 s at 500/s (a loaded machine sends less)
        assert result.failed == 0, f"{result}\nold:\n{old.out}\nnew:\n{new.out}"
        assert "took 4 listening socket(s) over" in new.out  # DNS UDP+TCP, ready, metrics
        assert "cancelled" not in old.out
        # the successor serves alone now, DNS and HTTP on the same addresses
        assert query(port, "after.example.", timeout=2).rcode() == dns.rcode.NOERROR
        assert http_get(ready, "/ready")[0] == 200
    finally:
        assert new.stop() == 0, new.out


@pytest.mark.parametrize("when", ["at-once", "after-drain"])
def test_drill_b_sigkill_after_the_successor_serves(
        conf: tuple[Path, int, int], drill_up: SlowUpstream, when: str) -> None:
    path, port, _ = conf
    result, _, new, killed = overlap(path, port, "udp", signal.SIGKILL,
                                     drained=when == "after-drain")
    try:
        late = [t for t in result.failed_at if t > killed]
        print(f"lost with SIGKILL {when}: {result.failed} (sent after the kill: {len(late)})")
        assert late == [], result  # the successor serves; nothing queued in the kernel is lost
        assert result.sent >= 1000, result
        if when == "after-drain":
            assert result.failed == 0, result
        # at once: only what the old process had read and not answered yet (reported above)
        assert query(port, "after.example.", timeout=2).rcode() == dns.rcode.NOERROR
    finally:
        assert new.stop() == 0, new.out


def test_no_predecessor_and_a_stale_control_socket_do_not_block_a_start(
        tmp_path: Path, conf: tuple[Path, int, int]) -> None:
    path, port, _ = conf
    ctl = str(tmp_path / "ctl.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(ctl)  # as a SIGKILLed instance leaves it: the file, nobody listening
    stale.close()
    d = start(path, "-handover.socket", ctl)
    try:
        assert query(port, "x.example.", timeout=2).rcode() == dns.rcode.NOERROR
        assert "took" not in d.out
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        probe.connect(ctl)  # the stale file was replaced by a live control socket
        probe.close()
    finally:
        assert d.stop() == 0, d.out
    assert not os.path.exists(ctl)  # its own path goes with it


def test_handover_off_binds_as_before(conf: tuple[Path, int, int]) -> None:
    path, port, _ = conf
    first = start(path, "-handover.socket", "none")
    try:
        second = Daemon("-conf", str(path), "-handover.socket", "none")
        assert second.stop(None) == 1
        assert "Address already in use" in second.out
        assert query(port, "x.example.", timeout=2).rcode() == dns.rcode.NOERROR
    finally:
        assert first.stop() == 0


def test_check_peer_refuses_another_uid() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        assert handover_messages.check_peer(a).pid == os.getpid()
        with pytest.raises(handover_messages.HandoverError, match="refused"):
            handover_messages.check_peer(a, uid=os.geteuid() + 1)


def fork_as_nobody(fn: Callable[[], int]) -> int:
    """Run ``fn()`` in a forked child as uid/gid 65534; the child's pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            code = fn()
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def exit_code(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching uid needs root")


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory another uid may reach and write (pytest's tmp_path is private)."""
    d = Path(tempfile.mkdtemp(prefix="linkdns-handover-"))
    os.chmod(d, 0o777)
    try:
        yield d
    finally:
        for f in d.iterdir():
            f.unlink()
        d.rmdir()


@needs_root
def test_another_user_cannot_take_the_sockets(open_dir: Path,
                                               conf: tuple[Path, int, int]) -> None:
    path, port, _ = conf
    ctl = open_dir / "ctl.sock"
    d = start(path, "-handover.socket", str(ctl))
    try:
        os.chmod(ctl, 0o666)  # let the connection through: the credential check must stop it

        def intruder() -> int:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.settimeout(5)
            s.connect(str(ctl))
            try:
                s.send(b'{"version": 1, "op": "hello", "pid": 1}')
                data, fds, _, _ = socket.recv_fds(s, 65536, 16)
            except (BrokenPipeError, ConnectionResetError):
                return 0  # refused: the connection is closed at once
            return 3 if fds else (0 if not data else 2)

        assert exit_code(fork_as_nobody(intruder)) == 0
        d.wait_for("refused")
        assert query(port, "x.example.", timeout=2).rcode() == dns.rcode.NOERROR
    finally:
        assert d.stop() == 0, d.out


@needs_root
def test_a_successor_does_not_take_over_from_another_user(open_dir: Path) -> None:
    ctl = str(open_dir / "ctl.sock")
    r, w = os.pipe()

    def squatter() -> int:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.bind(ctl)
        s.listen(1)
        os.write(w, b"x")
        s.settimeout(10)
        conn, _ = s.accept()
        conn.recv(100)
        return 0

    pid = fork_as_nobody(squatter)
    os.close(w)
    try:
        assert os.read(r, 1) == b"x"
        assert asyncio.run(handover.take_over(ctl)) is None
    finally:
        os.close(r)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
        exit_code(pid)


def test_default_path_follows_the_addresses_not_their_order() -> None:
    a = handover.default_path([("127.0.0.1", 53), ("10.0.0.1", 53)])
    assert a == handover.default_path([("10.0.0.1", 53), ("127.0.0.1", 53)])
    assert a != handover.default_path([("127.0.0.1", 53)])
    assert a != handover.default_path([("127.0.0.1", 53), ("10.0.0.1", 53)], worker=1)
    assert handover.default_path([("127.0.0.1", 0)]) is None  # ephemeral: never the same
    assert a is not None and os.path.dirname(a) == handover.runtime_dir()


def test_query_answered_in_flight_at_the_hand_over_reaches_the_client(
        tmp_path: Path, up: FakeUpstream) -> None:
    """A miss the old instance read just before the successor took over is answered by the
    old one (through a duplicate of the UDP socket) after it stopped reading."""
    port = free_port()
    path = corefile(tmp_path / "Corefile", port, up.addr, free_port(), free_port())
    up.handler = lambda q, proto: Reply(a_records(q, 1), delay=1.0)
    old = start(path)
    new: Daemon | None = None
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(4)
        q = dns.message.make_query("slow.example.", "A")
        s.sendto(q.to_wire(), ("127.0.0.1", port))
        up.wait_for(1)  # the old instance has it in flight
        new = start(path)
        new.wait_for("hand-over: serving")
        reply = dns.message.from_wire(s.recv(4096))
        assert reply.id == q.id and reply.answer
        s.close()
        assert old.stop() == 0
    finally:
        stop_all(old, *([new] if new else []))


def test_workers_hand_over_worker_by_worker(tmp_path: Path, drill_up: SlowUpstream) -> None:
    """-workers N: worker i of the successor takes worker i's sockets (its own SO_REUSEPORT
    sockets, DNS and HTTP) over."""
    port, ready, metrics = free_port(), free_port(), free_port()
    path = corefile(tmp_path / "Corefile", port, drill_up.addr, ready, metrics)
    old = Daemon("-conf", str(path), "-workers", "2")
    new: Daemon | None = None
    try:
        old.wait_for("linkdns-")
        new = Daemon("-conf", str(path), "-workers", "2")
        new.wait_for("hand-over: serving")
        deadline = time.monotonic() + 15
        while new.out.count("hand-over: serving") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert new.out.count("took 4 listening socket(s) over") == 2, new.out
        assert old.stop() == 0, old.out
        for i in range(20):  # new source ports: the kernel spreads them over both workers
            assert query(port, f"w{i}.example.", timeout=2).rcode() == dns.rcode.NOERROR
        assert http_get(ready, "/ready")[0] == 200
        assert new.stop() == 0, new.out
    finally:
        stop_all(old, *([new] if new else []))


async def test_a_reload_that_changes_the_addresses_moves_the_control_socket(
        tmp_path: Path) -> None:
    def derive(keys: list[tuple[str, int]]) -> str:
        return str(tmp_path / ("-".join(f"{h}_{p}" for h, p in keys) + ".sock"))

    a, b = free_port(), free_port()
    server = Server.from_blocks(parse_corefile(f".:{a} {{\n  bind 127.0.0.1\n}}\n"))
    server.handover_derive = derive
    server.handover_path = derive(server.listen_keys())
    await server.start()
    try:
        first = derive([("127.0.0.1", a)])
        assert os.path.exists(first)
        await server.reload(build_sites(parse_corefile(f".:{b} {{\n  bind 127.0.0.1\n}}\n"),
                                        53))
        moved = derive([("127.0.0.1", b)])
        assert not os.path.exists(first) and os.path.exists(moved)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        probe.connect(moved)  # a live control socket there
        probe.close()
    finally:
        await server.stop()
    assert not os.path.exists(moved)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_the_old_instance_serves_again_when_its_successor_goes(
        conf: tuple[Path, int, int], drill_up: SlowUpstream, sig: int) -> None:
    """A successor that dies (or is stopped) while the old instance idles: the old one
    serves the same sockets again, and can hand them over again."""
    path, port, ready = conf
    old = start(path)
    new: Daemon | None = None
    third: Daemon | None = None
    try:
        new = start(path)
        new.wait_for("hand-over: serving")
        old.wait_for("hand-over: drained")
        with Load(port, "udp", rate=500) as load:
            time.sleep(0.5)
            killed = time.monotonic()
            new.stop(sig)
            old.wait_for("serving our sockets again")
            time.sleep(1.0)
        result = load.result
        print(f"\nsuccessor {signal.Signals(sig).name}, the old instance resumes: {result}")
        if sig == signal.SIGTERM:
            assert result.failed == 0, result  # it drains; the old one reads meanwhile
        late = [t for t in result.failed_at if t > killed + 0.2]
        assert late == [], result  # a SIGKILL loses what the successor held, then nothing
        assert query(port, "back.example.", timeout=2).rcode() == dns.rcode.NOERROR
        assert http_get(ready, "/ready")[0] == 200
        third = start(path)  # and it hands over again
        third.wait_for("hand-over: serving")
        assert f"from pid {old.pid}" in third.out
        assert old.stop() == 0, old.out
        assert query(port, "third.example.", timeout=2).rcode() == dns.rcode.NOERROR
        assert third.stop() == 0, third.out
    finally:
        stop_all(old, *(d for d in (new, third) if d is not None))


def test_an_unusable_control_path_does_not_stop_a_start(tmp_path: Path,
                                                        conf: tuple[Path, int, int]) -> None:
    path, port, _ = conf
    d = start(path, "-handover.socket", str(tmp_path / "no" / "such" / "dir" / "ctl.sock"))
    try:
        assert "no control socket" in d.out
        assert query(port, "x.example.", timeout=2).rcode() == dns.rcode.NOERROR
    finally:
        assert d.stop() == 0, d.out
