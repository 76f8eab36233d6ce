"""Free ports for servers the tests start (dev servers, metrics endpoints, dashboards).

They come from `devserver.unused_port`: below the kernel's ephemeral range, so an outgoing
connection cannot take one between the test choosing it and the server binding it, and
never the defaults 7233/8233, which a developer's own server may use.
"""

from __future__ import annotations

from collections.abc import Collection

from geppetto_temporal.devserver import DEFAULT_PORT, DEFAULT_UI_PORT, unused_port


def free_port(exclude: Collection[int] = ()) -> int:
    """One port nothing listens on, other than `exclude` and the Temporal defaults."""
    return unused_port({*exclude, DEFAULT_PORT, DEFAULT_UI_PORT})


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports."""
    ports: list[int] = []
    while len(ports) < n:
        ports.append(free_port(ports))
    return ports


def internal_ports(port: int) -> list[str]:
    """`temporal server start-dev` arguments for the ports it would otherwise pick itself
    (in the ephemeral range, where an outgoing connection can take one before the bind),
    other than its gRPC `port`."""
    http_port = free_port({port})
    metrics_port = free_port({port, http_port})
    return ["--http-port", str(http_port), "--metrics-port", str(metrics_port)]
