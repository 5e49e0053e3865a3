"""The `interface` option: poll only while a network interface has a matching address."""

from __future__ import annotations

import socket


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
