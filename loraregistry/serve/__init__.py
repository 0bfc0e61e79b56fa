"""``lorareg serve``: a local, read-only web view of the registry (Starlette + Jinja2, server-side templates).

    from loraregistry.serve import create_app
    app = create_app()            # the registry at LORAREG_HOME, else the user data folder

Pages: ``/`` the grid (filters: base or finer base, loader verdict, tag, full-text search; paged),
``/entry/<sha256>`` the detail page, ``/compat`` which adapters load fully in a chosen tool for a base,
``/preview/<sha256>`` an entry's preview image (only from under indexed folders).
"""

from .app import PAGE_SIZE, create_app

__all__ = ["PAGE_SIZE", "create_app"]
