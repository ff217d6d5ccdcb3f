"""A worker of a parallel full verification (``app/audit/verify.py``): its part of the chains
(pickled, keys included) on stdin, its verification (pickled) on stdout."""

from __future__ import annotations

import pickle
import sys

from app.audit.verify import _verify_part


def main() -> None:
    part = pickle.loads(sys.stdin.buffer.read())  # noqa: S301 (from the process that started us)
    sys.stdout.buffer.write(pickle.dumps(_verify_part(part)))


if __name__ == "__main__":
    main()
