"""Canonical forms of personal input: pure functions, no database, no web framework.

Each normaliser returns the canonical form or raises ``ValueError`` with a fixed sentence that
never contains the input (the sentences become ``422`` details; the input may be personal data).
"""

# Dash-like characters people type between digit groups; NFKC leaves these as they are
# (it already maps full-width and half-width forms onto "-" and "ー").
HYPHENS = "-‐‑‒–—―−ー"
