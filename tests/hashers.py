"""A password hasher for the test process only."""

from __future__ import annotations

from django.contrib.auth.hashers import PBKDF2PasswordHasher


class OneRoundPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    """Django's PBKDF2 hasher at one iteration: each create_user or login otherwise costs half a
    second of CPU (a million iterations), which was minutes of the suite. The algorithm name and
    format are Django's own, and the iteration count is stored in the hash, so the web servers
    the browser tests start (real settings) verify these hashes too, then upgrade them."""

    iterations = 1
