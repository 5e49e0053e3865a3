"""`python bridge.py HOST PORT`: standard input and output joined to a TCP connection.

What `nc HOST PORT` does, for `plugin` and `plugout` commands in tests (nc is not on every
machine). When either side ends its output, the other side is told (shutdown), and the
bridge exits once both directions are done or either side is gone.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys


def main() -> int:
    host, port = sys.argv[1], int(sys.argv[2])
    try:
        sock = socket.create_connection((host, port), timeout=30)
    except OSError as err:
        sys.stderr.write(f"bridge: cannot connect to {host}:{port}: {err}\n")
        return 1
    sock.settimeout(None)
    selector = selectors.DefaultSelector()
    selector.register(0, selectors.EVENT_READ, "stdin")
    selector.register(sock, selectors.EVENT_READ, "server")
    try:
        while selector.get_map():
            for key, _ in selector.select():
                if key.data == "stdin":
                    data = os.read(0, 65536)
                    if not data:
                        selector.unregister(0)
                        sock.shutdown(socket.SHUT_WR)
                        continue
                    sock.sendall(data)
                else:
                    data = sock.recv(65536)
                    if not data:
                        return 0
                    view = memoryview(data)
                    while view:
                        view = view[os.write(1, view) :]
    except OSError:  # either side went away: nothing more to carry
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
