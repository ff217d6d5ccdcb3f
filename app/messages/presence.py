"""One-time presence codes: 6 digits sent to the customer's registered phone.

A code is kept only as a keyed hash (HMAC-SHA256 under its own subkey of the index key, bound
to the customer and the code's row), so a copy of the database does not give the codes away:
a million candidates are nothing to try, but not without the key. Valid for 5 minutes, once.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
from datetime import datetime

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.ext.asyncio import AsyncSession

from app.messages import repository

CODE_DIGITS = 6
_CODE = re.compile(rf"[0-9]{{{CODE_DIGITS}}}")


@functools.cache
def presence_code_key(index_key: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"shopvault/presence-code/v1"
    ).derive(index_key)


def new_code() -> str:
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


def code_hash(index_key: bytes, *, customer_id: str, code_id: str, code: str) -> str:
    message = f"{customer_id}\n{code_id}\n{code}".encode()
    return hmac.new(presence_code_key(index_key), message, hashlib.sha256).hexdigest()


def sms_text(code: str) -> str:
    return (
        f"認証コード：{code}\n"
        "お電話中の店舗スタッフにお伝えください（5分間有効）。"
        "お心当たりがない場合は、このメッセージを破棄してください。"
    )


async def consume_presence_code(
    session: AsyncSession, customer_id: str, code: str, now: datetime, *, index_key: bytes
) -> bool:
    """Whether ``code`` is a live code of this customer; if so it is used up, with the
    customer's other outstanding codes. Every live code is compared, in constant time.

    ``index_key`` is ``runtime.keys.index`` (the codes' subkey is derived from it)."""
    if not _CODE.fullmatch(code):
        return False
    matched: str | None = None
    for candidate in await repository.live_presence_codes(session, customer_id, now):
        expected = code_hash(index_key, customer_id=customer_id, code_id=candidate.id, code=code)
        if hmac.compare_digest(expected, candidate.code_hash) and matched is None:
            matched = candidate.id
    if matched is None or not await repository.use_presence_code(session, matched, now):
        return False
    await repository.retire_presence_codes(session, customer_id, now)
    return True
