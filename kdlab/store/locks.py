"""Shared artefacts made once: an exclusive lock on a file, held across processes (flock), so
that whoever makes an artefact (a teacher, generations, a trained tokenizer) holds it while the
others wait and then reuse; and a folder published whole, so a reader sees all of it or nothing."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


@contextlib.contextmanager
def file_lock(path: Path):
    """Hold `path` (created with its folder when missing), waiting while another process does."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def publish_folder(folder: Path, fill: Callable[[Path], None]) -> None:
    """`fill(tmp)` writes the files into a temporary folder beside `folder`, which is then
    renamed into place (replacing a leftover that was never complete)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        fill(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
