"""The web view: a Starlette app over the registry API, templates rendered on the server, no client framework.

Read-only: every route is a GET, and nothing here writes to the registry. Files leave the machine only as
preview images, and only from under a folder ``registry scan`` indexed: the route takes an entry id, never a
path, and the path the index holds is checked again against the indexed roots before it is sent.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ..errors import LoraregError
from ..registry import EntryNotFound, Registry
from ..registry.entry import Entry

PAGE_SIZE = 48
_HERE = Path(__file__).parent
_ID = re.compile(r"[0-9a-f]{12,64}")
_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
                ".gif": "image/gif"}
OUTCOME_LABELS = {"loads": "loads", "loads_partly": "partly", "fails": "fails", "not_modelled": "not modelled"}


class _View:
    """The registry behind a lock: one SQLite connection, used by one request at a time."""

    def __init__(self, root: Path | None, page_size: int) -> None:
        self.registry = Registry.open(root)
        self.lock = threading.Lock()
        self.page_size = page_size

    def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return getattr(self.registry, method)(*args, **kwargs)


def create_app(root: str | os.PathLike[str] | None = None, *, page_size: int = PAGE_SIZE) -> Starlette:
    """The app for the registry at ``root`` (default: LORAREG_HOME, else the user data folder)."""
    from ..verify.consumers import known_targets

    view = _View(Path(root) if root is not None else None, page_size)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(_HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.globals.update(outcome_label=OUTCOME_LABELS, loaders=known_targets())
    templates = Jinja2Templates(env=env)

    def render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> Response:
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    def grid(request: Request) -> Response:
        args = request.query_params
        filters = {"query": args.get("q", "").strip() or None, "architecture": args.get("base") or None,
                   "loader": args.get("loader") or None, "tag": args.get("tag") or None}
        page = _page(args.get("page"))
        try:
            found = view("search", filters["query"], architecture=filters["architecture"], loader=filters["loader"],
                         tag=filters["tag"], limit=view.page_size + 1, offset=(page - 1) * view.page_size)
            error = None
        except LoraregError as exc:  # an unknown base or loader typed into the URL: say so, show nothing
            found, error = [], exc.one_line()
        kept = {k: v for k, v in args.items() if k != "page" and v}
        return render(request, "grid.html", {
            "entries": [_card(e) for e in found[: view.page_size]], "error": error, "args": kept,
            "facets": view("facets"), "page": page,
            "prev_url": f"?{urlencode({**kept, 'page': page - 1})}" if page > 1 else None,
            "next_url": f"?{urlencode({**kept, 'page': page + 1})}" if len(found) > view.page_size else None})

    def detail(request: Request) -> Response:
        ref = request.path_params["entry_id"]
        if not _ID.fullmatch(ref):
            raise HTTPException(404, "no such entry")
        try:
            entry = view("show", ref)
        except (EntryNotFound, LoraregError):
            raise HTTPException(404, "no such entry") from None
        return render(request, "detail.html", {"e": _card(entry), "entry": entry})

    def compat(request: Request) -> Response:
        args = request.query_params
        base, tool = args.get("base") or "", args.get("tool") or ""
        groups: dict[str, list[dict[str, Any]]] = {}
        error = None
        if tool and tool not in known_targets():
            error = f"unknown tool {tool!r} (known: {', '.join(known_targets())})"
        elif base and tool:
            try:
                for entry in view("search", None, architecture=base):
                    groups.setdefault(entry.loaders.get(tool, "not verified"), []).append(_card(entry))
            except LoraregError as exc:
                groups, error = {}, exc.one_line()
        order = ["loads", "loads_partly", "fails", "not_modelled", "not verified"]
        return render(request, "compat.html", {
            "base": base, "tool": tool, "error": error, "facets": view("facets"),
            "bases": _base_choices(view("facets")), "shown": view.page_size,
            "grid_url": "/?" + urlencode({"base": base, "loader": tool}),
            "groups": [(name, groups[name]) for name in order if name in groups]})

    def preview(request: Request) -> Response:
        ref = request.path_params["entry_id"]
        if not _ID.fullmatch(ref):
            raise HTTPException(404)
        try:
            entry = view("show", ref)
        except (EntryNotFound, LoraregError):
            raise HTTPException(404) from None
        path = _servable(entry.preview, view("roots"))
        if path is None:
            raise HTTPException(404)
        return FileResponse(path, media_type=_IMAGE_TYPES[path.suffix.lower()],
                            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    routes = [
        Route("/", grid, methods=["GET"]),
        Route("/entry/{entry_id}", detail, methods=["GET"]),
        Route("/compat", compat, methods=["GET"]),
        Route("/preview/{entry_id}", preview, methods=["GET"]),
        Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        view.registry.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.view = view
    return app


def _page(text: str | None) -> int:
    try:
        return max(1, min(int(text or 1), 10_000))
    except ValueError:
        return 1


def _servable(preview: str | None, roots: list[str]) -> Path | None:
    """The preview's path when it is an image file under an indexed root (after resolving links), else None."""
    if not preview:
        return None
    try:
        path = Path(preview).resolve(strict=True)
    except OSError:
        return None
    if path.suffix.lower() not in _IMAGE_TYPES or not path.is_file():
        return None
    if not any(path.is_relative_to(Path(root)) for root in roots):
        return None
    return path


def _base_choices(facets: dict[str, list[str]]) -> list[str]:
    from ..architectures.ids import ARCHITECTURES

    return list(dict.fromkeys([*facets["architectures"], *facets["sub_bases"], *ARCHITECTURES]))


def _card(entry: Entry) -> dict[str, Any]:
    """What a card and the detail page show, with the sources of imported facts spelled out."""
    imported_name = next((v for v, _ in entry.imported_values("name")), None)
    return {
        "id": entry.id, "sha256": entry.sha256, "title": entry.name or imported_name or entry.file_name,
        "file_name": entry.file_name, "architecture": entry.architecture, "sub_base": entry.sub_base,
        "trigger_words": list(entry.all_trigger_words), "rank": entry.rank, "network_type": entry.network_type,
        "loaders": sorted(entry.loaders.items()), "tags": list(entry.tags),
        "has_preview": entry.preview is not None, "verdict": entry.verdict, "state": entry.blob,
    }
