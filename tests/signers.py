"""Signers for tests: they append SAS-like tokens, as the Planetary Computer's signer does."""

import itertools

_counter = itertools.count()


def fake_sas(href: str) -> str:
    """A fixed, secret-looking SAS query that must never reach a record."""
    return f"{href}?st=2026-01-01&se=2026-01-02&sp=rl&sv=2021-06-08&sr=c&sig=SECRETSIGNATURE%3D"


def minting(href: str) -> str:
    """Each call mints a new token: t0, t1, ... (the server decides which one is valid)."""
    return f"{href}?token=t{next(_counter)}"
