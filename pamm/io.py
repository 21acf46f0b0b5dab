"""Atomic file writes: a killed job leaves the old file or the new one, never half of one.

The temporary file is ``.<name>.<host>~<pid>.<random>.tmp`` beside the target. A process killed while
writing leaves it behind; the next successful ``write_text`` / ``write_json`` / ``torch_save`` of the
same target removes such leftovers whose process is gone (same host) or that are a day old, and never
another live writer's file.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)
_STALE_SECONDS = 24 * 3600


class UnreadableFileError(ValueError):
    """A results file that exists but cannot be parsed (truncated, corrupt); the message names it and the fix."""


def _writer_tag() -> str:
    host = "".join(c if c.isalnum() or c == "-" else "_" for c in socket.gethostname()) or "host"
    return f"{host}~{os.getpid()}"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, remove_stale: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it over ``path`` on success. ``remove_stale`` then
    also removes leftovers of killed writers of ``path`` (a scan of the folder: meant for run files, not for
    per-image files in folders of thousands)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_writer_tag()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the permissions open() would
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    if remove_stale:
        remove_stale_temporaries(path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of ``path`` that a killed writer left: those of a process of this host that no
    longer runs, those without a writer tag (older versions), and any older than a day. Returns them."""
    path = Path(path)
    host, own_pid = _writer_tag().split("~")
    removed = []
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        tag = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        tag_host, _, tag_pid = tag.partition("~")
        try:
            old = time.time() - tmp.stat().st_mtime > _STALE_SECONDS
            if tag_pid.isdigit():
                stale = old or (tag_host == host and int(tag_pid) != int(own_pid) and not _pid_alive(int(tag_pid)))
            else:
                stale = True  # no writer tag: an older version's leftover
            if stale:
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:
            continue  # its writer renamed or removed it meanwhile
    return removed


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path, remove_stale=True) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_yaml(path: str | os.PathLike, obj: Any) -> None:
    import yaml

    write_text(path, yaml.safe_dump(obj, sort_keys=False))


class _RecordingWriter:
    """A file-like ``torch.save`` writes through: every byte is written (short writes are retried, so a full disk
    raises its ``OSError``), and the first ``OSError`` is kept, because torch's C++ writer reports a failed
    write only as an opaque ``RuntimeError`` ("unexpected pos ...")."""

    def __init__(self, raw: Any):
        self.raw = raw
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                written = self.raw.write(view[done:])
                if not written:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.raw.name)
                done += written
        except OSError as err:
            self.error = self.error or err
            raise
        return done

    def flush(self) -> None:
        self.raw.flush()


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save``, atomically; a full disk or another write error surfaces as the ``OSError`` it is."""
    import torch

    with atomic_path(path, remove_stale=True) as tmp:
        with open(tmp, "wb", buffering=0) as raw:
            writer = _RecordingWriter(raw)
            try:
                torch.save(obj, writer)
            except RuntimeError:
                if writer.error is not None:
                    raise OSError(writer.error.errno, writer.error.strerror, str(path)) from None
                raise


def weights_file_format(path: str | os.PathLike) -> str | None:
    """A weights file's format from its first bytes: ``torch`` (``torch.save``'s zip archive or a legacy
    pickle), ``safetensors`` (an 8-byte header length, then the JSON header), or None."""
    path = Path(path)
    with path.open("rb") as handle:
        head = handle.read(9)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return "torch"
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size:
        return "safetensors"
    return None


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's content; a truncated or corrupt file is an ``UnreadableFileError`` naming it."""
    path = Path(path)
    text = path.read_text()
    try:
        return json.loads(text)
    except ValueError as err:
        raise UnreadableFileError(
            f"{path} is not valid JSON ({err}; {len(text)} bytes): it is truncated or corrupt; delete it and rerun "
            "the step that writes it"
        ) from None


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
