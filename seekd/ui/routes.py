"""`GET /ui` and `GET /ui/<asset>`: the page's files, without a key (they hold no secrets; every API
call the page makes carries the user's key and is checked as usual).

Only files under `static/` with a known type are served, and every answer carries a strict
Content-Security-Policy: scripts, styles, fonts and fetches from this origin only, no framing. So
even markdown that slips past the page's sanitizer cannot load or send anything elsewhere.
"""

from __future__ import annotations

from http import HTTPStatus
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse, Response

from seekd.errors import APIError

STATIC_DIR = Path(__file__).parent / "static"
UI_PREFIX = "/ui"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".woff2": "font/woff2",
    ".svg": "image/svg+xml",
}
# KaTeX sets inline style attributes on the math it renders, hence style-src 'unsafe-inline'
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; font-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate (ETag): an upgraded server never serves a stale page
}

router = APIRouter(include_in_schema=False)


@router.get(UI_PREFIX)
async def ui_root() -> Response:
    return RedirectResponse(f"{UI_PREFIX}/", status_code=HTTPStatus.TEMPORARY_REDIRECT)


@router.get(UI_PREFIX + "/{asset:path}")
async def ui_asset(asset: str) -> Response:
    path = asset_path(asset or "index.html")
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=HEADERS)


def asset_path(asset: str) -> Path:
    """The file for a URL path under /ui, or 404: never a file outside `static/`."""
    path = (STATIC_DIR / asset).resolve()
    if not path.is_relative_to(STATIC_DIR.resolve()) or not path.is_file() or path.suffix not in MEDIA_TYPES:
        raise APIError(HTTPStatus.NOT_FOUND, f"{UI_PREFIX}/{asset} is not a file of the web page", code="not_found")
    return path
