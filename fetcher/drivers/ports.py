"""Which port a driver connects to: the `service`/`port` option, else the protocol's default."""

from __future__ import annotations

import socket

from fetcher.errors import ConfigError, ServerConnectionError


def resolve_port(service: str | None, *, default: int, label: str, host: str) -> int:
    """`service` as a number or a name from /etc/services; `default` when it is not set."""
    if not service:
        return default
    if service.isdigit():
        port = int(service)
        if 0 < port < 65536:
            return port
        raise ConfigError(f"{label}: service {service} is not a valid port number")
    try:
        return socket.getservbyname(service, "tcp")
    except OSError as err:
        raise ServerConnectionError(
            f"connection to {host}:{service} failed: unknown service ({err})"
        ) from err
