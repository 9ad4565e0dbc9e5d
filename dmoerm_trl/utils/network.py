"""Which hosts are this machine: the servers warn when they bind anything else, the labeler wants an API key for
anything else. Standard library only (the CLI imports it without the ``[serve]`` extra).

Example:
    >>> from dmoerm_trl.utils.network import is_loopback, is_local_url
    >>> is_loopback("127.0.0.1"), is_loopback("0.0.0.0"), is_local_url("http://localhost:8000/v1")
    (True, False, True)
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_local_url(url: str) -> bool:
    """Whether ``url`` points at this machine (a loopback host)."""
    return is_loopback(urlsplit(url).hostname or "")
