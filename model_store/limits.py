"""The bounds every uploaded or stored artifact is read under, one object shared by the gateway
(validation at upload) and the workers (loading). Built from the settings
(`Settings.artifact_limits`); the defaults here equal the settings' defaults."""

from __future__ import annotations

from dataclasses import dataclass

RATIO_FLOOR = 1 << 20  # a bundle may always unpack to this much, whatever its compression ratio


@dataclass(frozen=True, slots=True)
class ArtifactLimits:
    max_unpacked_bytes: int = 8 << 30  # a bundle's members together, as actually read
    max_members: int = 256  # entries of a bundle (files and directories), iterated at most
    max_ratio: int = 100  # unpacked bytes per archive byte (zip entries and whole archives)
    max_parameters: int = 1_000_000_000  # an hf-encoder's parameters, from config and header

    def unpacked_budget(self, archive_bytes: int) -> int:
        """What an archive of this size may unpack to: the configured budget, and no more than
        max_ratio times its own size (a sparse tar or a gzip of zeros fails the second)."""
        return min(self.max_unpacked_bytes, max(archive_bytes * self.max_ratio, RATIO_FLOOR))


def budget_from(max_upload_bytes: int, expansion_factor: int, max_unpacked_bytes: int) -> int:
    """One unpacked budget from the configured limits: the upload limit times the expansion
    factor, capped by the explicit max_unpacked_bytes."""
    return min(max_upload_bytes * expansion_factor, max_unpacked_bytes)
