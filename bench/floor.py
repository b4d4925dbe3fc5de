#!/usr/bin/env python3
"""The floor under any Python hit path: a uvloop UDP server that answers every datagram with
itself, QR set (dnsperf counts that as an answer), and does nothing else.

    taskset -c 1 python bench/floor.py PORT &
    taskset -c 0 dnsperf -s 127.0.0.1 -p PORT -d FILE -l 10 -c 8 -q 200

Its CPU per query (``/proc/PID/stat`` utime+stime over the run / queries answered) is what one
event-loop callback plus a recvfrom and a sendto cost on this machine; linkdns's hit costs
that plus its own work. Quoted in bench/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import uvloop


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) > 2:
            self.transport.sendto(data[:2] + bytes((data[2] | 0x80,)) + data[3:], addr)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", port))
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        uvloop.run(main(int(sys.argv[1])))
    except KeyboardInterrupt:
        pass
