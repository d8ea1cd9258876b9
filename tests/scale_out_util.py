"""Helpers for tests that need several processes: workers of a local cluster
on 127.0.0.1 (free ports) and runs that receive SIGTERM.

Every process writes its stderr to a file (pipes read one after the other
could fill up and block a worker that its peer waits for) and belongs to a
`ProcessGroup` that kills whatever still runs when the test ends, so a
failing test leaves no straggler behind.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

from conftest import ROOT

# Each run is bounded; the machine may be shared and slow.
TIMEOUT = 900


def free_ports(count):
  """`count` distinct TCP ports that were free a moment ago."""
  sockets = [socket.socket() for _ in range(count)]
  try:
    for s in sockets:
      s.bind(("127.0.0.1", 0))
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


def local_tf_configs(count):
  """One TF_CONFIG per worker of a cluster of `count` on 127.0.0.1."""
  workers = [f"127.0.0.1:{port}" for port in free_ports(count)]
  return [json.dumps({"cluster": {"worker": workers},
                      "task": {"type": "worker", "index": index}})
          for index in range(count)]


def worker_hosts(count):
  return ",".join(f"127.0.0.1:{port}" for port in free_ports(count))


class ProcessGroup:
  """`python main.py` processes with their stderr in files under `folder`."""

  def __init__(self, folder):
    self.folder = pathlib.Path(folder)
    self.processes = {}

  def start(self, name, *args, env=None):
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1",
                       # One CPU device per worker, as in TF's multi-worker guide.
                       CUDA_VISIBLE_DEVICES="-1")
    environment.pop("TF_CONFIG", None)
    environment.update(env or {})
    with open(self.log_path(name), "w") as log:
      process = subprocess.Popen(
          [sys.executable, str(ROOT / "main.py"), *args], cwd=ROOT,
          stdout=subprocess.DEVNULL, stderr=log, env=environment)
    self.processes[name] = process
    return process

  def log_path(self, name):
    return self.folder / f"{name}.log"

  def log(self, name):
    return self.log_path(name).read_text()

  def last_line(self, name):
    lines = self.log(name).strip().splitlines()
    return lines[-1] if lines else ""

  def wait(self, *names, timeout=TIMEOUT):
    """Waits for the processes; returns their exit codes in order."""
    deadline = time.time() + timeout
    codes = []
    for name in names:
      process = self.processes[name]
      try:
        codes.append(process.wait(timeout=max(deadline - time.time(), 1)))
      except subprocess.TimeoutExpired:
        self.kill_all()
        raise AssertionError(f"{name} did not finish within {timeout} s:\n"
                             + self.log(name)[-3000:]) from None
    return codes

  def wait_for_text(self, name, text, timeout=TIMEOUT):
    """Waits until `text` appears in `name`'s stderr (fails if it exits)."""
    deadline = time.time() + timeout
    process = self.processes[name]
    while text not in self.log(name):
      if process.poll() is not None:
        raise AssertionError(f"{name} exited ({process.returncode}) before "
                             f"logging {text!r}:\n{self.log(name)[-3000:]}")
      if time.time() > deadline:
        raise AssertionError(f"{name} did not log {text!r} in {timeout} s")
      time.sleep(0.1)

  def sigterm(self, name):
    self.processes[name].send_signal(signal.SIGTERM)

  def kill_all(self):
    for process in self.processes.values():
      if process.poll() is None:
        process.kill()
        process.wait()
