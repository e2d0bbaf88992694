"""Serve an app factory on a port shared with sibling processes through SO_REUSEPORT.

`uvicorn --workers N` shares one listening socket, and whichever worker wins `accept` takes most
of a benchmark's keep-alive connections (measured: 84% vs 30% CPU for two workers). With one
SO_REUSEPORT socket per process the kernel spreads new connections evenly, as a load balancer in
front of N instances would.

    python -m bench._serve bench.ledger:ledgerx_app PORT
"""

from __future__ import annotations

import socket
import sys

import uvicorn


def main() -> None:
    factory, port = sys.argv[1], int(sys.argv[2])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    config = uvicorn.Config(factory, factory=True, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
