"""The HTML of the app's pages, served so that opening or reloading a page's own URL probes no wrong path.

Streamlit's client does not know the app's base path, so it tries candidates taken from the page's URL: for
``/race`` it asks ``/race/_stcore/health`` and ``/race/_stcore/host-config`` first (two 404s in the
browser's console on every reload of a page other than Home; streamlit/streamlit#7074), then ``/_stcore/...``.
The client reads ``window.__streamlit.BACKEND_BASE_URL`` when its page sets it before the client loads (the
embedding settings of Streamlit's own ``index.html``); with the app's base there, it asks only the right
path. Every page of this app sits one path segment below the base (``<base>/<url_path>``, under
``server.baseUrlPath`` or a proxy's prefix such as Community Cloud's ``/~/+/``), so the base is the page's
own folder, ``new URL(".", location.href)``: the same rule the race view uses to find its socket.

``page_routes`` serves Streamlit's ``index.html`` with that one setting added at each page's path, under any
prefix; ``st.App`` tries its own routes before Streamlit's, which would serve the same file unchanged.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Route

BASE_SCRIPT = ("<script>window.__streamlit = Object.assign("
               "{BACKEND_BASE_URL: new URL('.', window.location.href).href}, window.__streamlit || {});</script>")


def with_base_script(index_html: str) -> str:
    """Streamlit's ``index.html`` with BASE_SCRIPT first in its head (before the client's module script)."""
    head = index_html.find("<head>")
    if head < 0:
        raise ValueError("Streamlit's index.html has no <head>")
    at = head + len("<head>")
    return index_html[:at] + "\n    " + BASE_SCRIPT + index_html[at:]


def page_routes(url_paths: list[str], index_html: Path) -> list[BaseRoute]:
    """Routes that serve ``index_html`` (Streamlit's, from its static folder) with BASE_SCRIPT at each of
    ``url_paths`` (the pages' ``url_path``), at the root and under any path prefix. Read once, at the first
    request (the file ships with Streamlit and does not change while it runs)."""
    html: list[str] = []

    async def page(request: Request) -> HTMLResponse:
        if not html:
            html.append(with_base_script(index_html.read_text(encoding="utf-8")))
        return HTMLResponse(html[0], headers={"Cache-Control": "no-cache"})

    routes: list[BaseRoute] = []
    for url_path in url_paths:
        routes += [Route(f"/{url_path}", page, methods=["GET", "HEAD"]),
                   Route("/{prefix:path}/" + url_path, page, methods=["GET", "HEAD"])]
    return routes
