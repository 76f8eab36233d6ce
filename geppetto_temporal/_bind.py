"""Who may reach a web server of geppetto's: the rule the dashboard and the gateway share.

A server bound to loopback may go without a token (only this machine reaches it); any
other address needs one, and the server refuses to start without it. A server without
a token also answers only requests whose Host is a loopback name, which stops
DNS-rebinding pages from reading it. Pure functions: no web framework needed.
"""

from __future__ import annotations

import hmac
import ipaddress

from geppetto_temporal.errors import GeppettoError

_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


class UnsafeBindError(GeppettoError):
    """A web server would be reachable from other machines without a token."""


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) is this machine only."""
    name = host.strip().strip("[]").lower()
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(
    host: str,
    token: str | None,
    *,
    what: str = "the dashboard",
    token_env: str = "GEPPETTO_DASHBOARD_TOKEN",
    error: type[GeppettoError] = UnsafeBindError,
) -> None:
    """Refuse a non-loopback address without a token (raises `error`)."""
    if not is_loopback(host) and not token:
        raise error(
            f"{what} on {host} would be reachable from other machines: "
            f"give it a token with --token or {token_env} "
            "(or bind it to 127.0.0.1)"
        )


def host_of(host_header: str) -> str:
    """The host name of a `Host` header (`name:port`, `[v6]:port`)."""
    if host_header.startswith("["):
        return host_header.split("]", 1)[0] + "]"
    return host_header.rsplit(":", 1)[0]


def same_secret(supplied: str | None, secret: str) -> bool:
    """Whether `supplied` is `secret`, compared in constant time."""
    return supplied is not None and hmac.compare_digest(supplied.encode(), secret.encode())


def bearer_token(authorization: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if it is one."""
    return authorization[7:].strip() if authorization.lower().startswith("bearer ") else None
