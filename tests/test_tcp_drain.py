"""A stop drains TCP: a connection accepted before the stop whose client has not yet sent its
first query is given the read timeout, not taken for idle after TCP_DRAIN_IDLE and closed
after 0 bytes (a client slow to be scheduled would lose its query)."""

from __future__ import annotations

import socket
import threading
import time

import dns.message
import dns.rcode
from harness import Running

COREFILE = """
example.org:0 {
    bind 127.0.0.1
    errors
}
"""


def test_a_connection_silent_at_the_stop_still_gets_its_answer() -> None:
    srv = Running(COREFILE, drain=3.0)
    with srv:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        try:
            deadline = time.monotonic() + 5
            while not srv.run(lambda: sum(len(ln.tcp_conns)
                                          for ln in srv.server.listeners.values())):
                assert time.monotonic() < deadline, "the connection was never accepted"
                time.sleep(0.01)
            stopper = threading.Thread(target=srv.stop)
            stopper.start()
            time.sleep(1.0)  # past the drain's idle grace (0.5 s), well within the read timeout
            q = dns.message.make_query("example.com.", "A").to_wire()
            s.sendall(len(q).to_bytes(2, "big") + q)
            n = int.from_bytes(s.recv(2), "big")
            assert n, "closed after 0 bytes: the drain took a silent new connection for idle"
            r = dns.message.from_wire(s.recv(n))
            assert r.rcode() == dns.rcode.REFUSED
            stopper.join(10)
        finally:
            s.close()
