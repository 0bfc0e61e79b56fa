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
    app = create_app()
    status(f"serving the registry on http://{host}:{port}/ (Ctrl+C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
