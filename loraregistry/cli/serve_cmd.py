"""``lorareg serve``: the registry in a browser, on 127.0.0.1 by default."""

from __future__ import annotations

import ipaddress

import click

from .output import status


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but a loopback address shows your registry to the network.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(1, 65535), help="Port to bind.")
def serve(host: str, port: int) -> int:
    """Browse the registry: cards with previews, trigger words and loader verdicts, filters, search, a
    detail page per adapter and a compatibility view. Read-only; stop with Ctrl+C."""
    try:
        import uvicorn

        from ..serve import create_app
    except ImportError as exc:
        from ..errors import UsageError

        raise UsageError(f"`lorareg serve` needs the web extra ({exc.name} is not installed)",
                         hint="pip install 'loraregistry[serve]'") from None
    if not _loopback(host):
        status(f"warning: binding {host}: anyone who can reach this address can browse the registry")
    sock = _listen(host, port)  # bound here, so a busy port is one line of ours, not uvicorn's log and exit
    app = create_app()
    status(f"serving the registry on http://{host}:{port}/ (Ctrl+C stops)")
    try:
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    finally:
        sock.close()
    return 0


def _listen(host: str, port: int):
    import socket

    from ..errors import UsageError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UsageError(f"cannot resolve --host {host!r} ({exc.strerror or exc})", hint="give an IP address") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror or exc})",
                         hint="pick another --port, or stop what uses it") from None
    return sock


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
