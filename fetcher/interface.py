"""`interface` and `monitor`: poll only while a network link is up, or has been in use.

Both are fetchmail's (interface.c), for dial-up and VPN links, Linux only:

- `interface IFACE/ADDR[/MASK]`: a poll is skipped while IFACE is not up and running, or
  while neither its own address nor its peer's (a point-to-point link) is in ADDR/MASK
  (MASK 255.255.255.255 when left out): "skipping poll of HOST, SPEC down" or "... IP
  address excluded".
- `monitor IFACE`: a poll is skipped while IFACE saw no more than MONITOR_SLOP packets (in
  and out) since the last poll of this entry or of one after it in the rcfile, so that a
  daemon does not keep a dial-up link from timing out: "skipping poll of HOST, IFACE
  inactive". A link that is down, or whose counts went backwards (pppd restarted), does not
  skip. The counts are noted MONITOR_QUIESCE seconds after a poll, when the poll's own last
  packets are through.

The decisions are pure functions of what the link looks like (`Link`), tested as tables; only
`read_link` looks at the system (/proc/net/dev and the interface ioctls, as fetchmail does).
"""

from __future__ import annotations

import contextlib
import fcntl
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

NETDEV = Path("/proc/net/dev")
MONITOR_SLOP = 5  # packets a link may carry while it shuts down and still count as idle
MONITOR_QUIESCE = 3.0  # seconds after a poll before its link's counts are noted (fetchmail's)

# Linux's <linux/sockios.h> and <net/if.h>
_SIOCGIFFLAGS = 0x8913
_SIOCGIFADDR = 0x8915
_SIOCGIFDSTADDR = 0x8917
_SIOCGIFNETMASK = 0x891B
_IFF_RUNNING = 0x40
_IFNAMSIZ = 16


def _inet_aton(text: str) -> bool:
    try:
        socket.inet_aton(text)
    except (OSError, ValueError):
        return False
    return True


def interface_problem(spec: str) -> str | None:
    """What is wrong with an `IFACE/ADDR[/MASK]` spec, in fetchmail's words; None if valid.

    fetchmail's interface_parse() checks the address and mask with inet_aton(), so the
    shorthand forms it accepts ("1.2.3", "0x7f.1") pass here too.
    """
    _iface, slash, rest = spec.partition("/")
    if not slash:
        return "missing IP interface address"
    address, slash, mask = rest.partition("/")
    if not _inet_aton(address):
        return "invalid IP interface address"
    if slash and not _inet_aton(mask):
        return "invalid IP interface mask"
    return None


def _ipv4(text: str) -> int:
    return int.from_bytes(socket.inet_aton(text), "big")


@dataclass(frozen=True)
class Link:
    """What a network interface looks like now: found in /proc/net/dev and running."""

    packets: int  # received and sent, since the interface came up
    address: int  # its own IPv4 address, as a number (0: none)
    peer: int = 0  # the far end of a point-to-point link (0: none)


def interface_skip(spec: str, link: Link | None) -> str | None:
    """Why a poll with `interface spec` is skipped (fetchmail's words after "skipping poll of
    HOST, SPEC "), or None to poll. `spec` has been checked by interface_problem()."""
    if link is None:
        return "down"
    _iface, _slash, rest = spec.partition("/")
    address, _slash, mask_text = rest.partition("/")
    mask = _ipv4(mask_text) if mask_text else 0xFFFFFFFF
    wanted = _ipv4(address) & mask
    if (link.peer and link.peer & mask == wanted) or link.address & mask == wanted:
        return None
    return "IP address excluded"


def monitor_skip(noted: int | None, link: Link | None) -> bool:
    """Whether a poll of an entry with `monitor` is skipped: its link is up and carried no
    more than MONITOR_SLOP packets since `noted` (the count after the last poll; None: no
    poll yet, which counts from 0 as in fetchmail)."""
    if link is None:
        return False
    change = link.packets - (noted or 0)
    return 0 <= change <= MONITOR_SLOP


class MonitorCounts:
    """The packet counts `monitor` compares with, per mailbox, as fetchmail keeps them: after
    a poll, its link's count is noted for that entry and for every entry before it in the
    rcfile on the same link, never for those after it. So an entry polled later in the same
    round sees the earlier polls' traffic as activity and is polled too, and a round whose
    first entry was skipped for want of traffic skips the others as well."""

    def __init__(self) -> None:
        self._noted: dict[str, int] = {}

    def noted(self, name: str) -> int | None:
        return self._noted.get(name)

    def note(self, order: list[tuple[str, str | None]], name: str, packets: int) -> None:
        """`order`: every mailbox in rcfile order with its `monitor` link (None: none);
        `name` was just polled, and its link now shows `packets`."""
        link = dict(order).get(name)
        for other, other_link in order:
            if other_link is not None and other_link == link:
                self._noted[other] = packets
            if other == name:
                return


def netdev_packets(text: str, name: str) -> int | None:
    """Packets received plus sent by interface `name`, from /proc/net/dev's text."""
    for line in text.splitlines():
        label, colon, counts = line.strip().partition(":")
        if not colon or label.strip() != name:
            continue
        fields = counts.split()
        try:
            # Linux 2.2 and later: bytes, packets, ... 8 receive columns, then bytes, packets
            return int(fields[1]) + int(fields[9])
        except (IndexError, ValueError):
            return None
    return None


def read_link(spec: str) -> Link | None:
    """The interface named before the first `/` of `spec` as it is now; None if it is not
    there or not running (fetchmail's get_ifinfo())."""
    name = spec.partition("/")[0]
    if not name or len(name.encode()) >= _IFNAMSIZ:
        return None
    try:
        packets = netdev_packets(NETDEV.read_text(encoding="ascii", errors="replace"), name)
    except OSError:
        return None
    if packets is None:
        return None
    request = struct.pack(f"{_IFNAMSIZ}s{_IFNAMSIZ}x", name.encode())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            flags = struct.unpack_from("H", fcntl.ioctl(sock, _SIOCGIFFLAGS, request), 16)[0]
            if not flags & _IFF_RUNNING:
                return None
            address = _address(fcntl.ioctl(sock, _SIOCGIFADDR, request))
        except OSError:  # no such interface, or no IPv4 address on it
            return None
        peer = 0
        with contextlib.suppress(OSError):
            peer = _address(fcntl.ioctl(sock, _SIOCGIFDSTADDR, request))
    return Link(packets, address, peer)


def _address(ifreq: bytes) -> int:
    # struct ifreq: the name, then a struct sockaddr_in: family, port, address
    return int.from_bytes(ifreq[_IFNAMSIZ + 4 : _IFNAMSIZ + 8], "big")
