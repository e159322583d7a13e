"""What every message of the contract shares: its version tag and the error for an entry that
does not follow it (re-exported by workers/contract/messages.py)."""

from __future__ import annotations

CONTRACT_VERSION = b"1"


class ContractError(ValueError):
    """A message that does not follow this contract version."""
