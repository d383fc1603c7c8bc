"""Starting the party processes of a local run (``jointstats.local.runner``).

Each party is its own OS process, with its own memory, reading only its own config and
data. Started by exec'ing a new interpreter, a party first spends 0.2-0.4 s of CPU starting
Python and importing numpy, pyarrow and MPyC; three parties on two cores pay about 0.5 s
of wall time for that in every job. So, by default on Linux, parties are forked from a
*launcher*: a clean interpreter (``jointstats.local.launch.serve``, started once per
launching process, never a fork of the caller) that has imported those modules and holds
nothing else: no data, no keys, no event loop, no threads. A fork costs milliseconds.

The launcher forks one child per request, hands it its stdout (the worker's events channel,
``jointstats.engine.protocol``), stderr and environment, reports
its exit status, and dies with the process that started it. ``JOINTSTATS_LAUNCH=exec``
starts every party with a fresh interpreter instead. A node forks its job workers the same
way, from a launcher of its own started with the node.

BLAS thread counts are fixed when numpy is loaded, so forked parties get the launcher's:
one thread each unless OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS were set
when it started. Arrow's threads are set per party at run time (JOINTSTATS_THREADS).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from typing import IO

#: Modules the launcher imports once, so that no party process has to.
PRELOAD = ("jointstats.engine.party", "jointstats.engine.local_step", "jointstats.engine.sources", "jointstats.mpc.runtime",
           "jointstats.engine.secure", "jointstats.engine.output", "jointstats.engine.hooks", "jointstats.ledger.state",
           "jointstats.engine.dp", "jointstats.noise.sampler", "pyarrow.parquet", "pyarrow.csv", "pyarrow.compute")
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: Variables read when an interpreter starts: a party forked from a launcher started with
#: other values would not be the process an exec'd party is, so each distinct set of them has
#: its own launcher. (Trace sinks, JOINTSTATS_TRACE, are installed by each party as it starts.)
STARTUP_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH", "PYTHONHASHSEED", *THREAD_VARIABLES)


def use_launcher() -> bool:
    """True unless JOINTSTATS_LAUNCH=exec or this is not Linux (fork and fd passing needed)."""
    return os.environ.get("JOINTSTATS_LAUNCH", "fork") != "exec" and sys.platform.startswith("linux")


# ----------------------------------------------------------------------------- caller side


_LAUNCHER_MAIN = "import sys; from jointstats.local.launch import serve; serve(int(sys.argv[1]))"


class _Launcher:
    """The caller's handle on its launcher process: one request at a time, exits dispatched."""

    def __init__(self, env: dict[str, str]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER_MAIN, str(theirs.fileno())],
                                     pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, env=env)
        theirs.close()
        self.sock = ours
        self.file = ours.makefile("r", encoding="utf-8")
        self.lock = threading.Lock()
        self.gone = False
        self.replies: list[dict] = []
        self.reply_ready = threading.Condition()
        self.exits: dict[int, int] = {}
        self.exited = threading.Condition()
        ready = json.loads(self.file.readline() or "{}")
        if not ready.get("ready"):
            raise OSError("the party launcher did not start")
        threading.Thread(target=self._read, daemon=True, name="jointstats-launcher").start()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _read(self) -> None:
        for line in self.file:
            msg = json.loads(line)
            if "exit" in msg:
                with self.exited:
                    self.exits[msg["exit"]] = msg["status"]
                    self.exited.notify_all()
            else:
                with self.reply_ready:
                    self.replies.append(msg)
                    self.reply_ready.notify_all()
        with self.exited:  # the launcher is gone: its children are too (they die with it)
            self.exits.setdefault(-1, -int(signal.SIGKILL))
            self.exited.notify_all()
        with self.reply_ready:
            self.gone = True
            self.reply_ready.notify_all()

    def start(self, argv: list[str], env: dict[str, str], stdout_fd: int, stderr_fd: int,
              new_session: bool = False) -> int:
        with self.lock:
            payload = (json.dumps({"argv": argv, "env": env, "cwd": os.getcwd(),
                                   "new_session": new_session}) + "\n").encode()
            socket.send_fds(self.sock, [payload], [stdout_fd, stderr_fd])
            with self.reply_ready:
                if not self.reply_ready.wait_for(lambda: self.replies or self.gone, timeout=30) or not self.replies:
                    raise OSError("the party launcher did not answer")
                reply = self.replies.pop(0)
        if "error" in reply:
            raise OSError(f"the party launcher could not fork: {reply['error']}")
        return reply["pid"]

    def wait(self, pid: int, timeout: float | None) -> int | None:
        with self.exited:
            self.exited.wait_for(lambda: pid in self.exits or -1 in self.exits, timeout)
            return self.exits.get(pid, self.exits.get(-1))


_lock = threading.Lock()
_launchers: dict[tuple, _Launcher] = {}


def _get_launcher(env: dict[str, str]) -> _Launcher:
    """The launcher for parties with this environment (started on first use)."""
    # (a fork of the caller must not share its parent's launcher connection)
    key = (os.getpid(), *(env.get(var) for var in STARTUP_VARIABLES))
    with _lock:
        launcher = _launchers.get(key)
        if launcher is None or not launcher.alive():
            launcher = _launchers[key] = _Launcher(env)
        return launcher


def start_launcher(env: dict[str, str]) -> None:
    """Start the launcher for parties with this environment now, if parties are forked
    (a long-running caller, such as a node, so that its first job does not wait for it).
    A launcher that cannot start is left to ``start_party``, which then execs."""
    if use_launcher():
        try:
            _get_launcher(env)
        except OSError:
            pass


class ForkedParty:
    """A party process forked by the launcher, with the part of ``subprocess.Popen``'s
    interface the runner uses (``stdout``: the events, ``stderr``: the log, ``poll``,
    ``wait``, ``terminate``, ``kill``, ``returncode``)."""

    def __init__(self, argv: list[str], env: dict[str, str], new_session: bool = False):
        self._launcher = _get_launcher(env)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            self.pid = self._launcher.start(argv, env, out_w, err_w, new_session)
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        self.stdout: IO[str] = open(out_r, "r", encoding="utf-8", errors="replace")
        self.stderr: IO[str] = open(err_r, "r", encoding="utf-8", errors="replace")
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._launcher.wait(self.pid, 0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self._launcher.wait(self.pid, timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired("party", timeout)
        return self.returncode

    def _signal(self, signum: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)


def start_party(argv: list[str], env: dict[str, str], *, new_session: bool = False,
                exec_command: list[str] | None = None):
    """Start one party process running ``jointstats.engine.party`` with ``argv``; Popen-like,
    with ``stdout`` (its events, ``jointstats.engine.protocol``) and ``stderr`` (its log) pipes.

    ``new_session`` puts it in a session of its own (a terminal's Ctrl-C then reaches only
    its caller, which stops it in order); ``exec_command`` is what runs it when it is exec'd
    (default ``python -m jointstats.engine.party ARGV``). A launcher that cannot be started or does
    not answer is reported on stderr and the party is exec'd instead: the job never depends
    on the launcher working."""
    if use_launcher():
        try:
            return ForkedParty(argv, env, new_session)
        except OSError as exc:
            print(f"jointstats: starting the party in a fresh interpreter ({exc})", file=sys.stderr)
    command = exec_command or [sys.executable, "-m", "jointstats.engine.party", *argv]
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
                            env=env, start_new_session=new_session)


# ----------------------------------------------------------------------------- launcher side


def _child(argv: list[str], env: dict[str, str], cwd: str, stdout_fd: int, stderr_fd: int,
           sock: socket.socket, launcher: int, from_imports: dict[str, str],
           new_session: bool = False) -> None:
    """In the forked child: its own stdio, environment and working directory (the caller's
    at the time of the request, as an exec'd party would have), then the party's job."""
    sock.close()
    if new_session:
        os.setsid()
    os.chdir(cwd)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.set_wakeup_fd(-1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(stdout_fd, 1)
    os.dup2(stderr_fd, 2)
    os.close(devnull)
    os.close(stdout_fd)
    os.close(stderr_fd)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    import logging
    for handler in logging.root.handlers:  # handlers made in the launcher hold its stderr object
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.stderr)
    os.environ.clear()
    os.environ.update(from_imports)  # set by the preloaded modules (MPyC: MPYC_MAXWORKERS, ...)
    os.environ.update(env)
    from jointstats.engine.party import die_with_parent, exit_now, main
    die_with_parent(launcher)
    try:
        status = main(argv)
    except BaseException:  # noqa: BLE001 - a bug: main() already turns errors into a status
        status = 1
    exit_now(status)


def serve(fd: int) -> None:
    """The launcher's loop: fork a party per request, report each child's exit."""
    import importlib
    import selectors
    from jointstats.engine.party import die_with_parent
    die_with_parent(os.getppid())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for its caller, with which it dies
    launcher = os.getpid()
    before = dict(os.environ)
    for name in PRELOAD:
        importlib.import_module(name)
    from_imports = {k: v for k, v in os.environ.items() if before.get(k) != v}
    import gc
    gc.collect()
    gc.freeze()  # the garbage collector of a child never walks (and so never copies) these pages
    sock = socket.socket(fileno=fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    sock.sendall(b'{"ready": true}\n')
    buffered = b""
    fds: list[int] = []
    while True:
        for key, _ in sel.select():
            if key.fileobj == wake_r:
                os.read(wake_r, 4096)
                while True:
                    try:
                        pid, status = os.waitpid(-1, os.WNOHANG)
                    except ChildProcessError:
                        break
                    if pid == 0:
                        break
                    code = os.waitstatus_to_exitcode(status)
                    sock.sendall((json.dumps({"exit": pid, "status": code}) + "\n").encode())
                continue
            data, new_fds, _, _ = socket.recv_fds(sock, 1 << 20, 8)
            if not data:
                return  # the caller is gone
            buffered += data
            fds.extend(new_fds)
            while b"\n" in buffered:
                line, buffered = buffered.split(b"\n", 1)
                request = json.loads(line)
                stdout_fd, stderr_fd = fds.pop(0), fds.pop(0)
                try:
                    pid = os.fork()
                except OSError as exc:
                    os.close(stdout_fd)
                    os.close(stderr_fd)
                    sock.sendall((json.dumps({"error": str(exc)}) + "\n").encode())
                    continue
                if pid == 0:
                    _child(request["argv"], request["env"], request["cwd"], stdout_fd, stderr_fd, sock,
                           launcher, from_imports, bool(request.get("new_session")))
                os.close(stdout_fd)
                os.close(stderr_fd)
                sock.sendall((json.dumps({"pid": pid}) + "\n").encode())

