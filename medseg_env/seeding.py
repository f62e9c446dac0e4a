"""Seeds that are the same in every process: :func:`stable_int`.

The benchmark seeds each episode, and the SFT export each trajectory and its split, from a hash
of what identifies it, so that an episode's seed does not depend on which other episodes run,
in what order, or in which process.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def stable_int(*parts: Any) -> int:
    """A 63-bit integer from the SHA-256 of ``parts`` (as JSON): the same in every process.

    Python's ``hash()`` of a string is salted per process, so it cannot seed anything that
    must be reproducible.

    Raises:
        TypeError: a part that JSON cannot hold.
    """
    digest = hashlib.sha256(json.dumps(list(parts), separators=(",", ":")).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
