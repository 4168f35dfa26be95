"""Signers for tests: they append SAS-like tokens, as the Planetary Computer's signer does.

Each maps a published href to its loopback twin first (as the world's own signer does), so records
keep the canonical URL and the token is added to what is actually fetched.
"""

import itertools

from geopile.world.world import loopback_signer

_counter = itertools.count()


def fake_sas(href: str) -> str:
    """A fixed, secret-looking SAS query that must never reach a record."""
    query = "st=2026-01-01&se=2026-01-02&sp=rl&sv=2021-06-08&sr=c&sig=SECRETSIGNATURE%3D"
    return f"{loopback_signer(href)}?{query}"


def minting(href: str) -> str:
    """Each call mints a new token: t0, t1, ... (the server decides which one is valid)."""
    return f"{loopback_signer(href)}?token=t{next(_counter)}"
