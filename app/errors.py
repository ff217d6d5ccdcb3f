"""One exception hierarchy for every refusal, rendered as RFC 9457 problem details.

Each cause has a stable ``type`` (``/problems/<slug>``) that a POS terminal can map to its own
wording. Details are fixed sentences written here: never a value taken from the request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from app.audit.events import EventDraft

PROBLEM_BASE = "/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"


class Problem(Exception):
    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"
    default_detail: ClassVar[str] = "The service could not handle the request."

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        audit_event: EventDraft | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.detail = detail or self.default_detail
        self.headers = headers or {}
        # A refusal that must itself be recorded (denied access, failed login): the unit of work
        # rolls back the request's work, then commits this event before the answer goes out.
        self.audit_event = audit_event
        self.extra = extra or {}
        super().__init__(self.detail)

    @property
    def type_uri(self) -> str:
        return PROBLEM_BASE + self.slug


class BadRequest(Problem):
    status, slug, title = 400, "bad-request", "Bad request"


class PurposeRequired(BadRequest):
    slug, title = "purpose-required", "Purpose required"
    default_detail = "Send X-Access-Purpose with one of the documented purposes."


class BadHeader(BadRequest):
    slug, title = "bad-header", "Malformed header"


class Unauthorized(Problem):
    status, slug, title = 401, "unauthorized", "Authentication required"
    default_detail = "A valid bearer token is required."

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.headers.setdefault("WWW-Authenticate", "Bearer")


class InvalidCredentials(Unauthorized):
    slug, title = "invalid-credentials", "Invalid credentials"
    default_detail = "The login or password is not correct."


class Forbidden(Problem):
    status, slug, title = 403, "forbidden", "Forbidden"
    default_detail = "Your role may not do this."


class PurposeNotAllowed(Forbidden):
    slug, title = "purpose-not-allowed", "Purpose not allowed"
    default_detail = "Your role may not use this purpose here."


class VisitRequired(Forbidden):
    slug, title = "visit-required", "Open visit required"
    default_detail = (
        "This access needs X-Visit-Id of an open visit for this customer at your store."
    )


class ReasonRequired(Forbidden):
    slug, title = "reason-required", "Reason required"
    default_detail = "This access needs X-Access-Reason."


class SubjectRequestRequired(Forbidden):
    slug, title = "subject-request-required", "Open customer request required"
    default_detail = (
        "X-Subject-Request-Id must name an open request of this customer at your store whose "
        "kind covers this operation."
    )


class PasswordChangeRequired(Forbidden):
    slug, title = "password-change-required", "Password change required"
    default_detail = (
        "Your password was set by an administrator: set your own with POST /auth/password first."
    )


class OwnAccountApproval(Forbidden):
    slug, title = "own-account-approval", "Approval of your own account"
    default_detail = "No one approves a change to their own account; another auditor must."


class MetricsLoopbackOnly(Forbidden):
    slug, title = "metrics-loopback-only", "Metrics on the loopback interface only"
    default_detail = "Without a metrics token configured, /metrics answers only local callers."


class NotFound(Problem):
    status, slug, title = 404, "not-found", "Not found"
    default_detail = "No such resource."


class MethodNotAllowed(Problem):
    status, slug, title = 405, "method-not-allowed", "Method not allowed"
    default_detail = "This resource does not answer this method; see Allow."


class Conflict(Problem):
    status, slug, title = 409, "conflict", "Conflict"
    default_detail = "The request conflicts with the current state of the resource."


class PayloadTooLarge(Problem):
    status, slug, title = 413, "payload-too-large", "Payload too large"
    default_detail = "Request bodies are limited to 1 MiB."


class UriTooLong(Problem):
    status, slug, title = 414, "uri-too-long", "URI too long"
    default_detail = "The request target is limited to 8 KiB."


class HeadersTooLarge(Problem):
    status, slug, title = 431, "headers-too-large", "Request header fields too large"
    default_detail = "Request headers are limited to 16 KiB in all, and 100 fields."


class ValidationFailed(Problem):
    status, slug, title = 422, "validation", "Invalid request"
    default_detail = "The request is not valid; see errors."


class RateLimited(Problem):
    status, slug, title = 429, "rate-limited", "Too many requests"
    default_detail = "Too many requests; retry later."

    def __init__(
        self,
        retry_after: int,
        detail: str | None = None,
        *,
        audit_event: EventDraft | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(
            detail, headers={"Retry-After": str(max(1, retry_after))}, audit_event=audit_event
        )
        self.retry_after = max(1, retry_after)
        # What was limited (``login``, ``search``…): refusals are summarised per caller and kind
        # (``app/audit/refusals.py``); by default the kind is read from the event.
        self.kind = kind


class DataIntegrityFailure(Problem):
    status, slug, title = 500, "data-integrity", "Stored data failed its integrity check"
    default_detail = "A stored value did not decrypt; nothing was disclosed. Operators are alerted."


class ServiceUnavailable(Problem):
    status, slug, title = 503, "unavailable", "Service unavailable"
    default_detail = "The service is temporarily unavailable; retry shortly."

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.headers.setdefault("Retry-After", "5")


class AuditUnavailable(ServiceUnavailable):
    slug, title = "audit-unavailable", "Audit log unavailable"
    default_detail = "The access could not be recorded, so no data was returned. Retry shortly."


def all_problem_types() -> list[type[Problem]]:
    seen: dict[str, type[Problem]] = {}
    stack: list[type[Problem]] = [Problem]
    while stack:
        cls = stack.pop()
        seen.setdefault(cls.slug, cls)
        stack.extend(cls.__subclasses__())
    return sorted(seen.values(), key=lambda c: (c.status, c.slug))
