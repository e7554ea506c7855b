"""Claims: which worker trains which run, taken atomically, released only by their owner, stale ones taken over.

Usage: ``if claim_run("runs", rid): try: ... finally: release_run("runs", rid)``

A claim is the file ``<runs>/.claims/<run_id>``, holding its owner (pid, host, start time). It is created complete
in one step (written to a private temporary file, then hard-linked into place, which fails when the name exists:
atomic on POSIX and NFS v3+), so no reader ever sees a half-written claim. Taking over the claim of a dead owner on
this host happens under an exclusive ``flock`` of ``<runs>/.claims.lock`` (released by the kernel when its holder
dies, so it can never go stale itself): the claim is read again under the lock and removed only if it still names
the same dead owner, then a new one is linked in place. Any number of workers restarting at once therefore win each
run once.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

__all__ = ["claim_run", "release_run", "claim_holder", "holder_alive", "pid_alive"]

_EMPTY_CLAIM_AGE = 60.0  # seconds: an empty or unreadable claim older than this was left by a writer that died


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _me() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": platform.node(), "time": time.time()}


def claim_holder(runs_dir: str | Path, rid: str) -> dict | None:
    """The owner recorded in ``rid``'s claim ({} when the claim is unreadable), None when there is no claim."""
    try:
        text = (Path(runs_dir) / ".claims" / rid).read_text()
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text or "{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def holder_alive(holder: dict | None) -> bool:
    """Whether a claim's owner may still be working: alive on this host, or on another host (not checkable)."""
    if holder is None:
        return False
    if holder.get("host") == platform.node() and holder.get("pid"):
        return pid_alive(int(holder["pid"]))
    return True


def _stale(path: Path, holder: dict | None) -> bool:
    if holder is None:
        return False
    if not holder:  # empty or unreadable: a writer of the old format that died mid-write
        try:
            return time.time() - path.stat().st_mtime > _EMPTY_CLAIM_AGE
        except FileNotFoundError:
            return False
    return holder.get("host") == platform.node() and bool(holder.get("pid")) and not pid_alive(int(holder["pid"]))


def _link_claim(path: Path) -> bool:
    """Create ``path`` holding this process as owner, complete or not at all; False when it exists."""
    tmp = path.with_name(f".{path.name}.new-{os.getpid()}-{time.monotonic_ns()}")
    tmp.write_text(json.dumps(_me()))
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _takeover_lock(claims: Path):
    import fcntl

    with open(claims.parent / ".claims.lock", "a") as f:  # beside .claims/, which then holds only claims
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def claim_run(runs_dir: str | Path, rid: str) -> bool:
    """Atomically claim ``rid`` for this process; False when another worker that may be alive holds it."""
    claims = Path(runs_dir) / ".claims"
    claims.mkdir(parents=True, exist_ok=True)
    path = claims / rid
    if _link_claim(path):
        return True
    if not _stale(path, claim_holder(runs_dir, rid)):
        return False
    with _takeover_lock(claims):
        holder = claim_holder(runs_dir, rid)  # again, under the lock: another worker may have taken it over
        if holder is not None and not _stale(path, holder):
            return False
        path.unlink(missing_ok=True)
        return _link_claim(path)


def release_run(runs_dir: str | Path, rid: str) -> None:
    """Remove ``rid``'s claim if this process owns it (a claim taken over by another worker stays)."""
    holder = claim_holder(runs_dir, rid)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == platform.node():
        (Path(runs_dir) / ".claims" / rid).unlink(missing_ok=True)
