"""`kiln models push NAME DIRECTORY`: a directory packed as the tar bundle the server accepts.

Members are named relative to the directory (`config.json`, `tokenizer/vocab.txt`: no leading
`./` or `/`), regular files only, sorted, with neutral owners and times, so the same files make the
same bytes. A symbolic link or special file is refused here, before anything is uploaded: the
server would refuse it anyway (bundles carry no links).
"""

from __future__ import annotations

import os
import stat
import tarfile
import tempfile
from pathlib import Path


class NotPackable(ValueError):
    """The directory holds something a bundle cannot carry."""


def files_of(root: Path) -> list[tuple[str, Path]]:
    """(member name, path) for every regular file under root, sorted; links are refused."""
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            mode = path.lstat().st_mode
            member = path.relative_to(root).as_posix()
            if stat.S_ISLNK(mode):
                raise NotPackable(f"{member} is a symbolic link; a bundle carries no links")
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise NotPackable(f"{member} is not a regular file")
            if stat.S_ISREG(mode):
                out.append((member, path))
    if not out:
        raise NotPackable(f"{root} holds no files")
    return sorted(out)


def pack_directory(root: Path) -> Path:
    """A temporary .tar of root's files (the caller deletes it)."""
    members = files_of(root)
    fd, name = tempfile.mkstemp(prefix="kiln-bundle-", suffix=".tar")
    with os.fdopen(fd, "wb") as out, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member, path in members:
            info = tarfile.TarInfo(member)
            info.size = path.stat().st_size
            info.mode = 0o644
            with path.open("rb") as f:
                tar.addfile(info, f)
    return Path(name)
