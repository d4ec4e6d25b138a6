"""``voltmx.net.isNetworkAvailable`` on a host: routes and interfaces instead of radios."""

from __future__ import annotations

import errno
import os
import socket

from bgtransfer.voltmx import constants

__all__ = ["is_network_available"]

_SYS_NET = "/sys/class/net"
# TEST-NET-1 (RFC 5737): connecting a UDP socket only asks the kernel for a route, and
# nothing is sent, so this works offline and never leaks a packet.
_PROBE = ("192.0.2.1", 9)


def _has_route() -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(_PROBE)
        except OSError as exc:
            if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL):
                return False
            raise
    return True


def _interfaces_up(*, wireless: bool) -> bool:
    try:
        names = os.listdir(_SYS_NET)
    except OSError:
        return False
    for name in names:
        if name == "lo":
            continue
        is_wireless = os.path.isdir(os.path.join(_SYS_NET, name, "wireless"))
        try:
            with open(os.path.join(_SYS_NET, name, "operstate")) as f:
                up = f.read().strip() in ("up", "unknown")
        except OSError:
            continue
        if up and is_wireless == wireless:
            return True
    return False


def is_network_available(network_type: str) -> bool:
    if network_type == constants.NETWORK_TYPE_ANY:
        return _has_route()
    if network_type == constants.NETWORK_TYPE_WIFI:
        return _interfaces_up(wireless=True) and _has_route()
    if network_type == constants.NETWORK_TYPE_ETHERNET:
        return _interfaces_up(wireless=False) and _has_route()
    return False  # 2G..5G: a host has no cellular radio this port can see
