"""The headers every response carries, whatever produced it (a route, a refusal, a static file).

The API answers JSON that no browser should render, frame or run: its Content-Security-Policy
allows nothing at all. HTML pages (``/docs``, ``/redoc``, the printable access report and
forms register) may load scripts, styles, images and fonts from this origin only, and fetch
only from it (Swagger UI reads ``/openapi.json`` and tries requests out); no inline script runs
on any of them (a worker may start from a ``blob:`` the page's own script made: ReDoc's
search). Inline styles are allowed on pages: ReDoc writes its styles into the page, and the
printable pages carry their own stylesheet — with nothing loadable from elsewhere, a style has
no way to send anything out.
"""

from __future__ import annotations

API_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
PAGE_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        # ReDoc indexes the document for its search in a worker it makes from its own code.
        "worker-src 'self' blob:",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'none'",
    ]
)

COMMON: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=(), usb=()"),
    # Browsers heed it only over HTTPS, which is how production serves the API (behind TLS).
    (b"strict-transport-security", b"max-age=63072000; includeSubDomains"),
)


def security_headers(content_type: bytes | None) -> list[tuple[bytes, bytes]]:
    """The security headers for a response of this media type."""
    page = content_type is not None and content_type.lower().startswith(b"text/html")
    policy = PAGE_POLICY if page else API_POLICY
    return [*COMMON, (b"content-security-policy", policy.encode())]
