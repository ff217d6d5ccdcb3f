"""customer keys re-masked in place: room on their pages, the retired-key check per statement

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05 09:00:00

A purge re-masks every key of the shred key buckets its erasures touched (``app/shredding.py``):
with a million customers staying, millions of ``customer_key`` rows updated in statements of tens
of thousands. Two things made each such row cost more than re-masking it in Python:

- Revision 0006 refuses a data key row that names a retired master key with a row trigger, a
  PL/pgSQL call and a look-up per row: it doubled what those statements cost (41,000 rows
  updated in 1.3 s with it, 0.7 s without). The same check now runs once per statement over the
  rows it wrote (a transition table), after them: a statement that writes one such row still
  fails whole. SQLite keeps its row triggers (a ``WHEN`` clause, no call).
- Pages filled by inserts had no room for a row's new version, so every update wrote a new
  entry in each of the table's three indexes. With a quarter of each page left free
  (``fillfactor``) the new version stays on its page and no index changes (a "HOT" update):
  0.26-0.35 s for those 41,000 rows. Pages written from now on keep that room; existing pages
  get it when the table is rewritten (``VACUUM FULL customer_key``, which locks it). The table
  grows by a third.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY_TABLES = ("customer_key", "service_key")
FILLFACTOR = 75
_MESSAGE = "a data key may not be wrapped by a retired master key"  # as revision 0006 says it

STATEMENT_FUNCTION = f"""
CREATE FUNCTION refuse_retired_master_key_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM written w JOIN master_key_retirement r ON r.id = w.master_key_id
        WHERE r.retired_at IS NOT NULL
    ) THEN
        RAISE EXCEPTION '{_MESSAGE}' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(STATEMENT_FUNCTION)
    for table in KEY_TABLES:
        op.execute(f"DROP TRIGGER {table}_live_master_key ON {table}")
        # A trigger with a transition table takes one event, and no column list.
        for event in ("INSERT", "UPDATE"):
            op.execute(
                f"CREATE TRIGGER {table}_live_master_key_{event.lower()} AFTER {event} ON {table}"
                " REFERENCING NEW TABLE AS written FOR EACH STATEMENT"
                " EXECUTE FUNCTION refuse_retired_master_key_rows()"
            )
    op.execute("DROP FUNCTION refuse_retired_master_key()")
    op.execute(f"ALTER TABLE customer_key SET (fillfactor = {FILLFACTOR})")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "CREATE FUNCTION refuse_retired_master_key() RETURNS trigger LANGUAGE plpgsql AS $$\n"
        "BEGIN\n"
        "    IF EXISTS (SELECT 1 FROM master_key_retirement"
        " WHERE id = NEW.master_key_id AND retired_at IS NOT NULL) THEN\n"
        f"        RAISE EXCEPTION '{_MESSAGE}' USING ERRCODE = 'check_violation';\n"
        "    END IF;\n"
        "    RETURN NEW;\n"
        "END\n"
        "$$"
    )
    for table in KEY_TABLES:
        for event in ("insert", "update"):
            op.execute(f"DROP TRIGGER {table}_live_master_key_{event} ON {table}")
        op.execute(
            f"CREATE TRIGGER {table}_live_master_key"
            f" BEFORE INSERT OR UPDATE OF master_key_id, wrapped_key ON {table}"
            " FOR EACH ROW EXECUTE FUNCTION refuse_retired_master_key()"
        )
    op.execute("DROP FUNCTION refuse_retired_master_key_rows()")
    op.execute("ALTER TABLE customer_key RESET (fillfactor)")
