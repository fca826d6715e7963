"""Atomic file and directory writes, and JSONL reading with errors that name the file and line.

Every stage writes through these helpers: output goes to a temporary sibling path and is renamed
into place only when complete, so an interrupted stage never leaves a half-written output behind.
Outputs get the modes the process's umask gives ordinary files (0644/0755 under the usual 022), not
the private 0600/0700 of temporary files, so a group sharing a volume can read them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


class DataError(ValueError):
    """Bad input data; the message names the file and line."""


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, briefly, for every thread)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _publish_mode(path: Path, is_dir: bool) -> None:
    os.chmod(path, (0o777 if is_dir else 0o666) & ~_umask())


def unwritable(path: str | Path) -> str | None:
    """Why this process cannot create or replace `path` (None when it can): names the nearest existing
    folder that denies writing and says what to mount, for containers that run as a non-root user."""
    p = Path(path).absolute()
    d = p if p.is_dir() else p.parent
    while not d.exists():
        d = d.parent
    if os.access(d, os.W_OK | os.X_OK):
        return None
    uid, gid = os.geteuid(), os.getegid()
    return (f"{d} is not writable by uid {uid} (gid {gid}): mount a volume there that this user can write "
            f"(Kubernetes: a PVC with the pod's securityContext.fsGroup: {gid}; docker run: -v HOST_DIR:{d} with "
            f"HOST_DIR writable by uid {uid} or gid {gid})")


def require_writable(path: str | Path, name: str) -> None:
    """Fail before any work with a clear error when the output `path` (parameter `name`) cannot be written."""
    why = unwritable(path)
    if why:
        raise DataError(f"{name} = {str(path)!r}: {why}")


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Errors while writing `path` name it: torch's and C++ writers raise RuntimeErrors without the path or
    errno ("basic_ios::clear: iostream error", "PytorchStreamWriter failed writing file"); they become an
    OSError for `path` (ENOSPC when its volume is full, else EIO), which the CLI prints as one line."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    except RuntimeError as e:
        msg = str(e)
        if not any(s in msg for s in ("iostream", "PytorchStreamWriter", "file write failed", "unexpected pos")):
            raise
        import errno

        target = Path(path)
        probe = next((p for p in (target, *target.parents) if p.exists()), Path("."))
        full = shutil.disk_usage(probe).free < 16 * 2**20
        code = errno.ENOSPC if full else errno.EIO
        raise OSError(code, f"{os.strerror(code)} ({msg.splitlines()[0][:120]})", str(path)) from e


def _tmp_sibling(path: Path, is_dir: bool) -> Path:
    why = unwritable(path)
    if why:
        raise DataError(f"cannot write {path}: {why}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # left by a killed earlier run: its unfinished output, or the previous output it was replacing (a kill
    # between _replace's renames leaves `path` absent and the complete previous version in .old-<pid>)
    for stale in [*path.parent.glob(f".{path.name}.tmp-*"), *path.parent.glob(f".{path.name}.old-*")]:
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    # tempfile creates 0700/0600 (private): _publish_mode gives the output the umask's modes when it is renamed
    if is_dir:
        return Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    return Path(name)


def _replace(tmp: Path, path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    tmp = _tmp_sibling(path, is_dir=True)
    try:
        yield tmp
    except OSError as e:  # named by the output it was writing, not the temporary folder
        shutil.rmtree(tmp, ignore_errors=True)
        name = str(e.filename or "")
        if name.startswith(str(tmp)):
            raise OSError(e.errno, e.strerror, str(path) + name[len(str(tmp)):]) from e
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish_mode(tmp, is_dir=True)
    _replace(tmp, path)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file for writing; on success it is fsynced and renamed onto `path`."""
    path = Path(path)
    tmp = _tmp_sibling(path, is_dir=False)
    try:
        with writing(path), open(tmp, mode) as f:  # a write error names `path` (Python's carry no filename)
            yield f
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _publish_mode(tmp, is_dir=False)
    os.replace(tmp, path)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_file(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.write("\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    n = 0
    with atomic_file(path) as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_text(path: str | Path) -> str:
    """A UTF-8 text file; binary or otherwise undecodable content is a DataError naming file:line."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at "
                        f"offset {e.start}); is it a binary file?") from None


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(read_text(path))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (did the previous stage run?)") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def iter_jsonl(path: str | Path, what: str = "file") -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; a bad line raises DataError naming file:line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                                f"is it a binary file?") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def read_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> list[dict]:
    """Read a JSONL file; blank lines are skipped; a bad line raises DataError naming file:line."""
    rows = []
    for lineno, row in iter_jsonl(path):
        missing = [k for k in required if k not in row]
        if missing:
            raise DataError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
        rows.append(row)
    return rows


def digest(path: str | Path) -> str:
    """The one content hash: sha256 of a file, or of a directory's files (each file's path relative to the
    directory, then its bytes, in sorted order). A model's hash (evaluate records it, register checks it),
    lineage tags, checkpoint manifests and the stages' DVC fingerprints all use it."""
    path = Path(path)
    h = hashlib.sha256()
    if not path.is_dir():
        _hash_file(h, path)
        return h.hexdigest()
    for p in sorted(x for x in path.rglob("*") if x.is_file()):
        h.update(str(p.relative_to(path)).encode() + b"\0")
        _hash_file(h, p)
    return h.hexdigest()


def _hash_file(h, path: Path) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
