"""``/docs`` (Swagger UI) and ``/redoc`` with no inline script, so that they work under the
pages' Content-Security-Policy (``script-src 'self'``); their assets are the ones
``fastapi_offline`` serves under ``/static-offline-docs``. The scripts that FastAPI's pages carry
inline are served as files of their own."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_oauth2_redirect_html
from starlette.responses import FileResponse, HTMLResponse, Response

STATIC = "/static-offline-docs"
FAVICON = Path(fastapi_offline.__file__).parent / "static" / "favicon.png"
OAUTH2_REDIRECT = "/docs/oauth2-redirect"
JAVASCRIPT = "text/javascript; charset=utf-8"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def _redirect_script() -> str:
    """The script of FastAPI's OAuth2 redirect page, as it ships it."""
    html = bytes(get_swagger_ui_oauth2_redirect_html().body).decode()
    match = _INLINE_SCRIPT.search(html)
    assert match is not None, "FastAPI's OAuth2 redirect page has no script"
    return match[1]


def _page(title: str, head: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n"
        f'<link rel="icon" href="{STATIC}/favicon.png">\n{head}</head>\n<body>\n{body}</body>\n'
        "</html>\n"
    )


def docs_router(app: FastAPI) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    openapi_url = str(app.openapi_url)
    parameters: dict[str, Any] = {
        "url": openapi_url,
        "dom_id": "#swagger-ui",
        "layout": "BaseLayout",
        "deepLinking": True,
        "showExtensions": True,
        "showCommonExtensions": True,
        # No call to an online validator: the page stays on this host.
        "validatorUrl": None,
        **(app.swagger_ui_parameters or {}),
    }
    swagger_init = (
        f"window.ui = SwaggerUIBundle(Object.assign({json.dumps(parameters)}, {{\n"
        f"  oauth2RedirectUrl: window.location.origin + {json.dumps(OAUTH2_REDIRECT)},\n"
        "  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],\n"
        "}));\n"
    )
    swagger_page = _page(
        f"{app.title} - Swagger UI",
        f'<link rel="stylesheet" href="{STATIC}/swagger-ui.css">\n',
        f'<div id="swagger-ui" data-openapi-url="{openapi_url}"></div>\n'
        f'<script src="{STATIC}/swagger-ui-bundle.js"></script>\n'
        '<script src="/docs/swagger-init.js"></script>\n',
    )
    redirect_page = _page(
        "Swagger UI: OAuth2 Redirect", "", '<script src="/docs/oauth2-redirect.js"></script>\n'
    )
    redirect_script = _redirect_script()
    redoc_page = _page(
        f"{app.title} - ReDoc",
        "",
        f'<redoc spec-url="{openapi_url}"></redoc>\n'
        f'<script src="{STATIC}/redoc.standalone.js"></script>\n',
    )

    @router.get("/docs")
    async def swagger_ui() -> HTMLResponse:
        return HTMLResponse(swagger_page)

    @router.get("/docs/swagger-init.js")
    async def swagger_ui_init() -> Response:
        return Response(swagger_init, media_type=JAVASCRIPT)

    @router.get(OAUTH2_REDIRECT)
    async def swagger_ui_redirect() -> HTMLResponse:
        return HTMLResponse(redirect_page)

    @router.get("/docs/oauth2-redirect.js")
    async def swagger_ui_redirect_script() -> Response:
        return Response(redirect_script, media_type=JAVASCRIPT)

    @router.get("/favicon.ico")
    async def favicon() -> FileResponse:
        # Browsers ask for it on every page, the printable ones included.
        return FileResponse(FAVICON, media_type="image/png")

    @router.get("/redoc")
    async def redoc() -> HTMLResponse:
        return HTMLResponse(redoc_page)

    return router
