"""The listener's memo of query shapes: kept for names hit more than once, not for one-offs.

A memo entry (the scanned query, its route, its size hooks) costs ~600 bytes and only pays
off when the same datagram shape comes back. A name asked once after it was cached (a search
storm, a one-off lookup, the memory benchmark's verification pass) must not leave one behind;
a name hit twice gets one, and every later hit is answered through it.
"""

from __future__ import annotations

import dns.message
import dns.rcode
from fakeupstream import FakeUpstream, Reply, a_records
from harness import Running, raw

from linkdns.server.listen import Listener


def corefile(up: FakeUpstream) -> str:
    return f".:0 {{\n  bind 127.0.0.1\n  cache\n  forward . {up.addr}\n}}\n"


def listener(srv: Running) -> Listener:
    (ln,) = srv.server.listeners.values()
    return ln


def ask(srv: Running, name: str, qid: int) -> dns.message.Message:
    q = dns.message.make_query(name, "A")
    q.id = qid
    data = raw(srv.port, q.to_wire())
    assert data is not None
    r = dns.message.from_wire(data)
    assert r.id == qid and r.rcode() == dns.rcode.NOERROR and r.answer
    return r


def test_names_hit_once_leave_no_memo_names_hit_twice_do(up: FakeUpstream) -> None:
    up.handler = lambda q, p: Reply(a_records(q, 1, 300))
    with Running(corefile(up)) as srv:
        ln = listener(srv)
        names = [f"once-{i}.example.org." for i in range(50)]
        for i, n in enumerate(names):
            ask(srv, n, 1000 + i)  # miss: the upstream answers, the cache stores
            ask(srv, n, 2000 + i)  # first hit
        assert up.count() == 50
        assert len(ln.memo) == 0
        for i, n in enumerate(names[:10]):
            ask(srv, n, 3000 + i)  # second hit: memoized now
        assert len(ln.memo) == 10
        for i, n in enumerate(names[:10]):
            r = ask(srv, n, 4000 + i)  # answered through the memo, with its own ID
            assert r.answer[0].name.to_text() == n
        assert len(ln.memo) == 10 and up.count() == 50


def test_a_reload_of_routes_forgets_memo_and_filter(up: FakeUpstream) -> None:
    up.handler = lambda q, p: Reply(a_records(q, 1, 300))
    with Running(corefile(up)) as srv:
        ln = listener(srv)
        for qid in (1, 2, 3):
            ask(srv, "again.example.org.", qid)
        assert len(ln.memo) == 1 and any(ln.seen)

        async def forget() -> None:
            ln.forget()

        srv.call(forget())
        assert len(ln.memo) == 0 and not any(ln.seen)
