"""The rule for running without client authentication, shared by `serve` and gunicorn."""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
        except OSError:
            return False


def unauthenticated_bind_problem(binds: Iterable[str], settings: Mapping[str, Any],
                                 allow_flag: bool = False) -> str | None:
    """Why serving on ``binds`` is refused, or None. Without trusted issuers only loopback is served,
    unless unauthenticated access is explicitly allowed (then a warning is logged)."""
    if settings["TRUSTED_ISSUERS"]:
        return None
    hosts = [b.rsplit(":", 1)[0] if not b.startswith("unix:") else "127.0.0.1" for b in binds]
    exposed = [h for h in hosts if not is_loopback(h or "0.0.0.0")]
    if not exposed:
        return None
    if allow_flag or settings["ALLOW_UNAUTHENTICATED"]:
        log.warning("serving WITHOUT client authentication on %s: any client that can reach it may call it",
                    ", ".join(exposed))
        return None
    return (f"refusing to serve without client authentication on {', '.join(exposed)}: configure "
            "CDS_TRUSTED_ISSUERS, bind to 127.0.0.1, or allow it explicitly (--allow-unauthenticated or "
            "CDS_ALLOW_UNAUTHENTICATED=true)")
