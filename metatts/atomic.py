"""Atomic folder saves: build next to the target, then rename into place.

Every saved artifact of metatts (a model export, a voice) is a folder. Saving
``P/NAME`` never writes into ``P/NAME`` itself:

1. :func:`recover` finishes or undoes an earlier save that was killed (see
   below) and deletes the temporary folders of saves whose process is gone.
2. The new content is written into a hidden sibling
   ``P/.NAME.tmp-<pid>-<hex>-<host>`` (created with ``os.mkdir``, so its mode
   follows the user's umask).
3. If ``P/NAME`` exists it is renamed to the backup ``P/.NAME.old``; the new
   folder is renamed to ``P/NAME``; the backup is deleted.

A rename within one folder is atomic on POSIX file systems, so at every
instant one complete version is on disk: ``P/NAME`` (old or new), or only
``P/.NAME.old`` (killed between the two renames of step 3). :func:`recover`,
which every save and every load runs first, renames such a lone backup back
to ``P/NAME``; a backup next to a ``P/NAME`` is left over from a finished
swap and is deleted. An exception while writing deletes the temporary folder
and leaves ``P/NAME`` untouched.

References:
  IEEE Std 1003.1 (POSIX), rename(): "If the link named by the new argument
    exists, it shall be removed and old renamed to new. In this case, a link
    named new shall remain visible to other threads throughout the renaming
    operation".
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
from typing import Iterator, Optional, Sequence

TMP_TAG = ".tmp-"
OLD_TAG = ".old"


def _parts(target: str):
  target = os.path.abspath(os.fspath(target))
  parent, name = os.path.split(target.rstrip(os.sep))
  if not name:
    raise ValueError(f"Cannot save to {target!r}: give a folder name, not "
                     "the root directory.")
  return target, parent, name


def backup_path(target: str) -> str:
  """The hidden backup sibling ``P/.NAME.old`` of ``P/NAME``."""
  _, parent, name = _parts(target)
  return os.path.join(parent, f".{name}{OLD_TAG}")


def _host() -> str:
  """This machine's name as used in temporary folder names (a pid is only
  meaningful on the host that wrote it, e.g. on a shared file system)."""
  return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "host"


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except (PermissionError, OSError):
    return True
  return True


def _fsync_dir(path: str) -> None:
  """Makes a folder's renames durable (best effort; not on every OS)."""
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def recover(target: str) -> None:
  """Repairs what an interrupted save of ``target`` left behind.

  * Only the backup ``.NAME.old`` exists: the save was killed between its two
    renames; the backup (the complete previous version) is renamed back.
  * Both exist: the swap had finished; the stale backup is deleted.
  * ``.NAME.tmp-<pid>-<hex>-<host>`` folders of processes of this host that
    no longer run are deleted (half-written saves).

  Failures (e.g. a read-only folder) are ignored: loading still works from
  whatever complete version is there.

  Args:
    target: the artifact folder ``P/NAME``.
  """
  try:
    target, parent, name = _parts(target)
  except ValueError:
    return
  old = backup_path(target)
  try:
    if os.path.isdir(old):
      if os.path.lexists(target):
        shutil.rmtree(old, ignore_errors=True)
      else:
        os.replace(old, target)
        _fsync_dir(parent)
    prefix = f".{name}{TMP_TAG}"
    if os.path.isdir(parent):
      for entry in os.listdir(parent):
        if not entry.startswith(prefix):
          continue
        parts = entry[len(prefix):].split("-", 2)  # pid, hex, host
        if (len(parts) == 3 and parts[0].isdigit() and parts[2] == _host()
            and not _pid_alive(int(parts[0]))):
          shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
  except OSError:
    pass


def is_within(path: str, root: str) -> bool:
  """Whether ``path`` is ``root`` or inside it (symlinks resolved)."""
  path = os.path.realpath(os.fspath(path))
  root = os.path.realpath(os.fspath(root))
  try:
    return os.path.commonpath([path, root]) == root
  except ValueError:  # different drives
    return False


def check_writable_parent(target: str, what: str) -> None:
  """Raises ValueError unless ``target``'s parent can be created / written.

  Args:
    target: the file or folder about to be written.
    what: how to name it in the message (e.g. "the voice folder").
  """
  target, parent, _ = _parts(target)
  existing = parent
  while not os.path.exists(existing):
    up = os.path.dirname(existing)
    if up == existing:
      break
    existing = up
  if not os.path.isdir(existing):
    raise ValueError(
        f"Cannot write {what} {target}: {existing} is a file, not a folder; "
        "choose a path under a folder.")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise ValueError(
        f"Cannot write {what} {target}: no write permission in {existing}; "
        "choose a folder you can write to.")


def mkdir_temp(target: str) -> str:
  """Creates the hidden sibling folder a save of ``target`` writes into.

  ``os.mkdir(path, 0o777)`` applies the process umask, so the folder gets the
  same mode as any folder the user creates (``tempfile.mkdtemp`` would make it
  0700).
  """
  _, parent, name = _parts(target)
  os.makedirs(parent, exist_ok=True)
  while True:
    tmp = os.path.join(parent, f".{name}{TMP_TAG}{os.getpid()}-"
                       f"{secrets.token_hex(4)}-{_host()}")
    try:
      os.mkdir(tmp, 0o777)
      return tmp
    except FileExistsError:
      continue


def swap_into_place(tmp: str, target: str) -> None:
  """Moves the finished folder ``tmp`` to ``target`` (module docstring, 3.)."""
  target, parent, _ = _parts(target)
  old = backup_path(target)
  if os.path.lexists(target):
    if os.path.isdir(old):  # a stale backup: the target is complete
      shutil.rmtree(old)
    os.replace(target, old)
    os.replace(tmp, target)
    _fsync_dir(parent)
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.replace(tmp, target)
    _fsync_dir(parent)


@contextlib.contextmanager
def staged_dir(target: str) -> Iterator[str]:
  """Yields an empty hidden sibling folder; on success it becomes ``target``.

  Usage::

    with atomic.staged_dir("voices/me") as tmp:
      write everything into tmp
    # voices/me now holds it; an older voices/me was replaced in one rename

  An exception (or a kill) inside the block leaves ``target`` as it was.

  Args:
    target: the artifact folder to (re)place.

  Yields:
    The temporary folder's path.
  """
  target, _, _ = _parts(target)
  recover(target)
  tmp = mkdir_temp(target)
  try:
    yield tmp
    swap_into_place(tmp, target)
  finally:
    if os.path.lexists(tmp):
      shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str, text: str) -> None:
  """Writes a small text file and flushes it to disk before returning."""
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())


def check_not_within(target: str, protected: Sequence[Optional[str]],
                     what: str) -> None:
  """Raises ValueError if ``target`` is, or is inside, a protected folder.

  Args:
    target: the folder about to be replaced.
    protected: folders that must survive (e.g. the model a voice comes from);
      None entries are skipped.
    what: the name of ``target`` in the message.
  """
  for root in protected:
    if root and is_within(target, root):
      where = ("is" if os.path.realpath(target) == os.path.realpath(root)
               else "is inside")
      raise ValueError(
          f"Cannot write {what} to {os.path.abspath(target)}: it {where} the "
          f"model folder {os.path.abspath(root)}, which must stay intact; "
          "choose a folder outside it (e.g. voices/NAME).")


__all__ = ["backup_path", "check_not_within", "check_writable_parent",
           "is_within", "mkdir_temp", "recover", "staged_dir",
           "swap_into_place", "write_text"]
