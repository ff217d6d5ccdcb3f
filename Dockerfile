# syntax=docker/dockerfile:1
# shopvault: build the virtual environment in one stage, run it from a slim, non-root one.

FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml ./
COPY app ./app
# Installed from /app, where the runtime image keeps the same files: app/migrate.py finds the
# migrations beside the package (/app/migrations next to /app/app).
RUN /opt/venv/bin/pip install --editable .


FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SHOPVAULT_DATA_DIR=/data
RUN groupadd --system --gid 10001 shopvault \
    && useradd --system --uid 10001 --gid shopvault --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin shopvault \
    && install --directory --owner shopvault --group shopvault --mode 0700 /data
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY pyproject.toml alembic.ini ./
COPY app ./app
COPY migrations ./migrations
RUN python -c "import app.migrate as m; assert m.MIGRATIONS_DIR.is_dir() and m.head_revisions()" \
    && shopvault --help > /dev/null

USER shopvault
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["sh", "-c", "shopvault migrate && exec shopvault serve --host 0.0.0.0 --port 8000"]
