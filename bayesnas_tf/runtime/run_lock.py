"""One run per --model_dir: a lock file, `<model_dir>/.lock`.

Two runs writing into one folder (a job restarted by a scheduler while the
old one still runs, a command typed twice) would interleave checkpoints,
posterior.json, genotype.json and result.json of two runs, and both would
report success. So a run takes the folder's lock before it writes anything
and gives it back on every way out (normal end, error, preemption, Ctrl-C).

The lock is a small JSON file: the holder's host, process id and process
start time (from /proc, so a reused process id is not mistaken for the
holder), the start time of the run, its command line, and a heartbeat that
a background thread refreshes every HEARTBEAT_S seconds. It is created
atomically (written to a temporary file, then hard-linked to `.lock`,
which fails if the name exists; where the file system has no hard links,
O_CREAT | O_EXCL), so of two runs starting together exactly one gets it.

A second run reads the lock and
* refuses with one line naming the holder when the holder is alive: on this
  host, a process with that id and start time exists; on another host (a
  shared file system), the heartbeat is younger than STALE_AFTER_S;
* takes the lock over with one warning line when the holder is gone (kill
  -9, a crash, a host that went down: no such process here, or a heartbeat
  older than STALE_AFTER_S from another host), so a killed run resumes with
  the same command.

Under multi_worker_mirrored only the chief takes the lock (the other
workers write into scratch folders of their own, cluster.py); a study holds
one lock for its folder while its searches and retrains run in subfolders;
`--mode=export` only reads a finished run and takes none.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import json
import os
import shlex
import socket
import sys
import threading
import time
import uuid
from typing import Iterator, Optional

from absl import logging

from bayesnas_tf.errors import ModelDirInUseError
from bayesnas_tf.errors import OutputWriteError
from bayesnas_tf.errors import failure_reason
from bayesnas_tf.io_utils import remove_quietly

LOCK_FILE = ".lock"
HEARTBEAT_S = 30.0
# A lock of another host whose heartbeat is older than this is stale: ten
# missed heartbeats, with room for clocks that differ by a few minutes.
STALE_AFTER_S = 300.0


@dataclasses.dataclass(frozen=True)
class Holder:
  """What a lock file says about the run that holds it."""
  host: str
  pid: int
  process_start: Optional[int]   # /proc/<pid>/stat field 22; None elsewhere
  boot_id: Optional[str]         # this boot of the host; None elsewhere
  started: float                 # time.time() when the run took the lock
  command: str
  heartbeat: float               # time.time() of the last refresh
  token: str                     # tells this lock from a later one

  def describe(self) -> str:
    started = datetime.datetime.fromtimestamp(
        self.started, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (f"pid {self.pid} on {self.host}, started {started}, "
            f"command: {self.command}")


def _process_start(pid: int) -> Optional[int]:
  """The start time of process `pid` in clock ticks after boot (Linux), or
  None where /proc does not tell."""
  try:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
      stat = f.read()
  except OSError:
    return None
  # The command name (field 2) is in parentheses and may hold spaces.
  fields = stat[stat.rindex(")") + 2:].split()
  return int(fields[19])   # field 22 of the whole line


def _boot_id() -> Optional[str]:
  try:
    with open("/proc/sys/kernel/random/boot_id", encoding="utf-8") as f:
      return f.read().strip()
  except OSError:
    return None


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # Alive, owned by another user.
    return True
  return True


def _this_process(command: Optional[str]) -> Holder:
  now = time.time()
  return Holder(host=socket.gethostname(), pid=os.getpid(),
                process_start=_process_start(os.getpid()), boot_id=_boot_id(),
                started=now, command=command or shlex.join(sys.argv),
                heartbeat=now, token=uuid.uuid4().hex)


def read_holder(model_dir: str) -> Optional[Holder]:
  """The holder named by `model_dir`'s lock; None when there is no lock."""
  return _read_lock_file(os.path.join(model_dir, LOCK_FILE))


def _read_lock_file(path: str) -> Optional[Holder]:
  """The holder a lock file names; None when there is no such file. A lock
  that cannot be parsed (cut short by a full disk) reads as a holder with
  pid 0, which is never alive, and its text as the token."""
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except FileNotFoundError:
    return None
  try:
    values = json.loads(text)
    return Holder(**{field.name: values[field.name]
                     for field in dataclasses.fields(Holder)})
  except (ValueError, TypeError, KeyError):
    return Holder(host="?", pid=0, process_start=None, boot_id=None,
                  started=0.0, command="? (unreadable lock file)",
                  heartbeat=0.0, token=text)


def stale_reason(holder: Holder, now: Optional[float] = None) -> Optional[str]:
  """Why `holder` no longer runs (None: it may well be running)."""
  now = time.time() if now is None else now
  if holder.pid <= 0:
    return "the lock file cannot be read"
  same_boot = (holder.boot_id is None or _boot_id() is None
               or holder.boot_id == _boot_id())
  if holder.host == socket.gethostname() and same_boot:
    if not _pid_alive(holder.pid):
      return "no such process runs on this host"
    start = _process_start(holder.pid)
    if holder.process_start is not None and start is not None:
      return (None if start == holder.process_start else
              "its process id now belongs to another process")
    # No /proc: a live process id may have been reused; the heartbeat tells.
  elif holder.host == socket.gethostname():
    return "the host has restarted since"
  age = now - holder.heartbeat
  if age > STALE_AFTER_S:
    return f"its heartbeat stopped {age / 60:.0f} minutes ago"
  return None


class RunLock:
  """The lock of one model_dir while this process runs there."""

  def __init__(self, model_dir: str, command: Optional[str] = None):
    self.model_dir = model_dir
    self.path = os.path.join(model_dir, LOCK_FILE)
    self.holder = _this_process(command)
    self.created_dir = False
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None

  # --- taking and giving back ---------------------------------------------
  def acquire(self) -> None:
    """Takes the lock, or raises ModelDirInUseError naming the live holder.

    Writes nothing when refused. Creates model_dir when it does not exist
    (removed again on release if the run left it empty).
    """
    if not os.path.isdir(self.model_dir):
      try:
        os.makedirs(self.model_dir)
        self.created_dir = True
      except FileExistsError:
        pass
      except OSError as error:
        raise OutputWriteError(self.model_dir, failure_reason(error)) from None
    # Bounded: each turn either takes the lock, refuses, or removes one
    # stale lock that another starting run may have replaced meanwhile.
    for _ in range(10):
      if self._create():
        self._start_heartbeat()
        return
      holder = read_holder(self.model_dir)
      if holder is None:   # Released in between: try again.
        continue
      reason = stale_reason(holder)
      if reason is None:
        self._remove_created_dir()
        raise ModelDirInUseError(
            f"--model_dir={self.model_dir} is in use by another run "
            f"({holder.describe()}); wait for it to end or stop it, or pass "
            f"another --model_dir (its lock: {self.path})")
      if self._remove_stale(holder):
        logging.warning(
            "--model_dir=%s: taking over the lock of a run that is gone (%s); "
            "it was %s", self.model_dir, reason, holder.describe())
    raise ModelDirInUseError(
        f"--model_dir={self.model_dir}: could not take its lock {self.path} "
        "(other runs keep replacing it); pass another --model_dir")

  def release(self) -> None:
    """Gives the lock back (if it is still ours) and stops the heartbeat."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    holder = read_holder(self.model_dir)
    if holder is not None and holder.token == self.holder.token:
      remove_quietly(self.path)
    self._remove_created_dir()

  def _remove_created_dir(self) -> None:
    # A run that stopped before writing anything leaves no empty folder.
    if self.created_dir:
      with contextlib.suppress(OSError):
        os.rmdir(self.model_dir)

  def _write_temp(self, holder: Holder) -> str:
    temp = os.path.join(self.model_dir,
                        f"{LOCK_FILE}.{holder.pid}.{holder.token[:8]}.tmp")
    try:
      with open(temp, "w", encoding="utf-8") as f:
        json.dump(dataclasses.asdict(holder), f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    except OSError as error:
      remove_quietly(temp)
      raise OutputWriteError(self.path, failure_reason(error)) from None
    return temp

  def _create(self) -> bool:
    """Creates the lock file atomically; False when one exists."""
    temp = self._write_temp(self.holder)
    try:
      os.link(temp, self.path)
      return True
    except FileExistsError:
      return False
    except OSError as error:
      if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP,
                             errno.EXDEV):
        raise OutputWriteError(self.path, failure_reason(error)) from None
      return self._create_exclusive()
    finally:
      remove_quietly(temp)

  def _create_exclusive(self) -> bool:
    """O_CREAT | O_EXCL, for file systems without hard links."""
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    except OSError as error:
      raise OutputWriteError(self.path, failure_reason(error)) from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      json.dump(dataclasses.asdict(self.holder), f, indent=1)
      f.write("\n")
    return True

  def _remove_stale(self, holder: Holder) -> bool:
    """Removes the stale lock of `holder`. It is first renamed to a name of
    our own, and put back if it turns out to be another run's new lock (two
    runs taking over the same stale lock at once)."""
    aside = f"{self.path}.stale.{self.holder.token[:8]}"
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return False
    except OSError as error:
      raise OutputWriteError(self.path, failure_reason(error)) from None
    moved = _read_lock_file(aside)
    if moved is not None and moved.token != holder.token:
      with contextlib.suppress(OSError):
        os.link(aside, self.path)
      remove_quietly(aside)
      return False
    remove_quietly(aside)
    return True

  # --- heartbeat ----------------------------------------------------------
  def _start_heartbeat(self) -> None:
    self._stop.clear()
    self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat",
                                    daemon=True)
    self._thread.start()

  def _beat(self) -> None:
    warned = False
    while not self._stop.wait(HEARTBEAT_S):
      holder = read_holder(self.model_dir)
      if holder is None or holder.token != self.holder.token:
        logging.warning("the lock %s of this run was removed or taken over "
                        "by another run (%s)", self.path,
                        holder.describe() if holder else "no lock")
        return
      beat = dataclasses.replace(self.holder, heartbeat=time.time())
      try:
        temp = self._write_temp(beat)
        os.replace(temp, self.path)
      except (OSError, OutputWriteError) as error:
        # A full disk: the run's own next write reports it; the old
        # heartbeat keeps the lock valid for STALE_AFTER_S.
        if not warned:
          logging.warning("cannot refresh the lock %s: %s", self.path, error)
          warned = True


@contextlib.contextmanager
def hold(model_dir: str, enabled: bool = True,
         command: Optional[str] = None) -> Iterator[Optional[RunLock]]:
  """Holds the lock of `model_dir` for the block (nothing when not
  `enabled`: an export, a non-chief worker)."""
  if not enabled:
    yield None
    return
  lock = RunLock(model_dir, command)
  lock.acquire()
  try:
    yield lock
  finally:
    lock.release()


def live_holder(model_dir: str) -> Optional[Holder]:
  """The holder of `model_dir`'s lock when it still runs, else None."""
  holder = read_holder(model_dir)
  return holder if holder is not None and stale_reason(holder) is None else None
