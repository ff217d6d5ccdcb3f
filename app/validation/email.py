"""Email addresses: validated by email-validator; indexed with the domain lower-cased."""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email

MESSAGE = "Not a valid email address."


def normalise_email(text: str) -> tuple[str, str]:
    """(the address as email-validator normalises it, its index form), or ``ValueError``.

    The index form keeps the local part as given (a mail server may treat its case as
    significant) and lower-cases the domain (which never is).
    """
    try:
        # strict: also the 64-octet limit of the local part (RFC 5321), which mail servers apply.
        info = validate_email(text, check_deliverability=False, strict=True)
    except EmailNotValidError:
        # Its message may quote parts of the address.
        raise ValueError(MESSAGE) from None
    return info.normalized, f"{info.local_part}@{info.domain.lower()}"
