"""Which names say "secret": one rule for the policy that refuses a secret baked into an image and
the provenance that redacts build parameters before the statement is published.

A separate module (not ``secrets``: that is the standard library's, which ``sandbox`` uses) so
neither of those two depends on the other for it.
"""

from __future__ import annotations

import re

# A variable, label or parameter whose NAME says secret.
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY|ACCESS_?KEY", re.IGNORECASE)
# ...a name that only points at where the secret lives (DB_PASSWORD_FILE=/run/secrets/db).
POINTER_SUFFIX = re.compile(r"_(FILE|PATH|DIR)$", re.IGNORECASE)
