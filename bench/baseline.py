"""Another revision of this repository, unpacked on the side, so a benchmark can run its
router next to this one's in the same run: a speed comparison across revisions is only fair
when both routers meet the same machine at the same moment (this machine's speed moves by
tens of percent from one hour to the next)."""

from __future__ import annotations

import contextlib
import io
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class BaselineError(RuntimeError):
    """The revision could not be unpacked (not a git checkout, or no such revision)."""


def unpack(rev: str, into: Path, repo: Path = REPO) -> Path:
    """The tree of ``rev`` (any name git knows: a hash, a tag, ``main~3``) written to ``into``."""
    try:
        tar = subprocess.run(
            ["git", "-C", str(repo), "archive", "--format=tar", rev],
            check=True,
            capture_output=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = (getattr(exc, "stderr", b"") or b"").decode().strip() or str(exc)
        raise BaselineError(f"cannot unpack revision {rev!r}: {detail}") from exc
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(into, filter="data")
    return into


@contextlib.contextmanager
def baseline_tree(rev: str | None) -> Iterator[Path | None]:
    """``rev`` unpacked in a temporary folder for the block's length (None: no baseline)."""
    if rev is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as tmp:
        yield unpack(rev, Path(tmp))
