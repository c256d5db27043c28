#!/usr/bin/env python3
"""Runs the `cargo run` commands that README.md and docs/*.md show, word for
word but for the ports, and checks that what they start really chats.

The tests start the binaries by path, so they cannot notice that the command
a newcomer types first is broken (it was: three binaries, no default-run).
This script reads the commands from the docs themselves, so when the README
changes, the check follows it:

- the run command in the README's "Two commands" block (required), and every
  other `cargo run` that starts the server: it is started on free ports
  (`--port`, `--http-port`), two line clients and one WebSocket client must
  be welcomed and hear each other, then it is stopped with SIGTERM;
- every `cargo run ... --bin chat` (the terminal client): pointed at a server
  started with the README's run command, in pipe mode, it must send a line
  that a line client hears and end with `*** bye`;
- every ```sh block that runs `scripts/flood.sh` (README.md, docs/flood.md):
  run as one bash script, line by line as written, but with port 3000
  replaced by a free one (and the web port by another), and after a line
  that starts a server in the background a wait until its port answers
  (as a person typing the next line would); it must exit 0.

Hosts other than loopback or 0.0.0.0 in an example are replaced with
127.0.0.1: nothing here talks to another machine. On a failure it prints the
command and everything the process printed, and exits 1.

Usage: scripts/check-readme.py [--list]   (standard library only)
"""

import base64
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(
    os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md")
)
# The first `cargo run` may compile the release build.
START_TIMEOUT = 900
TIMEOUT = 15


class Failed(Exception):
    pass


def commands():
    """(file, line number, command) for every `cargo run` in the docs, and
    the README's run command from its "Two commands" block."""
    found = []
    run_command = None
    for doc in DOCS:
        in_block = False
        section = ""
        with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.startswith("```"):
                    in_block = not in_block
                    continue
                if not in_block and line.startswith("#"):
                    section = line.strip("# \n")
                    continue
                if in_block:
                    candidates = [line.strip()]
                else:
                    candidates = re.findall(r"`(cargo run[^`]*)`", line)
                for c in candidates:
                    # `cargo run …` in prose stands for any of them.
                    if not c.startswith("cargo run") or "…" in c:
                        continue
                    # A shell comment and a trailing `&` are not part of it.
                    c = re.sub(r"\s+#.*$", "", c).strip()
                    c = re.sub(r"\s*&$", "", c)
                    found.append((doc, n, c))
                    if doc == "README.md" and section == "Two commands" and in_block and run_command is None:
                        run_command = (doc, n, c)
    if run_command is None:
        raise Failed('README.md has no `cargo run` line in its "Two commands" block')
    unique = []
    for item in [run_command] + found:
        if item[2] not in [u[2] for u in unique]:
            unique.append(item)
    return run_command, unique


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_flag(args, flag, value):
    """Sets `flag value` in the program's arguments (after `--`)."""
    if "--" not in args:
        args.append("--")
    after = args.index("--")
    for i in range(after + 1, len(args) - 1):
        if args[i] == flag:
            args[i + 1] = value
            return
    args.extend([flag, value])


def binary(args):
    before = args[: args.index("--")] if "--" in args else args
    for i, a in enumerate(before):
        if a == "--bin" and i + 1 < len(before):
            return before[i + 1]
        if a.startswith("--bin="):
            return a.split("=", 1)[1]
    return "chatd"  # what `cargo run` runs by default (default-run)


def loopback_host(args):
    if "--" in args:
        after = args.index("--")
        for i in range(after + 1, len(args) - 1):
            if args[i] == "--host" and args[i + 1] not in ("127.0.0.1", "localhost", "0.0.0.0", "::1"):
                args[i + 1] = "127.0.0.1"


class Process:
    """A command in its own process group, its output collected."""

    def __init__(self, args, stdin=None):
        self.args = args
        self.out = []
        self.lock = threading.Condition()
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if stdin is not None:
            self.proc.stdin.write(stdin.encode())
            self.proc.stdin.close()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            with self.lock:
                self.out.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self.lock.notify_all()
        with self.lock:
            self.out.append(None)  # EOF
            self.lock.notify_all()

    def wait_line(self, pred, what, timeout):
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                for line in self.out:
                    if line is not None and pred(line):
                        return line
                if None in self.out:
                    raise Failed(f"{what}: the process ended first")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Failed(f"{what}: nothing after {timeout} s")
                self.lock.wait(left)

    def stop(self):
        """SIGTERM to the group (cargo and what it runs); the exit status."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise Failed("it did not stop within 15 s of SIGTERM")

    def output(self):
        with self.lock:
            return "\n".join(line for line in self.out if line is not None)


class LineClient:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.buf = b""
        self.welcome = self.read_line()
        if not self.welcome.startswith("*** welcome to chatd, "):
            raise Failed(f"a line client was not welcomed: {self.welcome!r}")
        self.name = self.welcome.split(", ", 1)[1].split("!", 1)[0]

    def read_line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise Failed("the server closed a line client")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def send(self, line):
        self.sock.sendall(line.encode() + b"\r\n")

    def expect(self, want):
        seen = []
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and len(seen) < 100:
            line = self.read_line()
            if line == want:
                return
            seen.append(line)
        raise Failed(f"{self.name} never got {want!r}; got {seen}")


class WebClient:
    """Just enough RFC 6455 for text messages: masked frames out, plain in."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise Failed("the server closed the WebSocket handshake")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 101 "):
            raise Failed(f"no WebSocket upgrade: {head[:200]!r}")
        self.welcome = self.read_text()
        if not self.welcome.startswith("*** welcome to chatd, "):
            raise Failed(f"the WebSocket client was not welcomed: {self.welcome!r}")
        self.name = self.welcome.split(", ", 1)[1].split("!", 1)[0]

    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise Failed("the server closed the WebSocket")
            self.buf += chunk

    def read_text(self):
        while True:
            self._need(2)
            opcode, length = self.buf[0] & 0x0F, self.buf[1] & 0x7F
            at = 2
            if length == 126:
                self._need(4)
                length, at = int.from_bytes(self.buf[2:4], "big"), 4
            elif length == 127:
                self._need(10)
                length, at = int.from_bytes(self.buf[2:10], "big"), 10
            self._need(at + length)
            payload, self.buf = self.buf[at : at + length], self.buf[at + length :]
            if opcode == 0x1:
                return payload.decode("utf-8")
            if opcode == 0x8:
                raise Failed(f"the server closed the WebSocket: {payload!r}")

    def send(self, text):
        data = text.encode()
        assert len(data) < 126
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(bytes([0x81, 0x80 | len(data)]) + mask + masked)

    def expect(self, want):
        seen = []
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and len(seen) < 100:
            text = self.read_text()
            if text == want:
                return
            seen.append(text)
        raise Failed(f"{self.name} (web) never got {want!r}; got {seen}")


def start_server(command):
    """Starts a server command on free ports; (process, line port)."""
    args = shlex.split(command)
    port, http_port = free_port(), free_port()
    set_flag(args, "--port", str(port))
    set_flag(args, "--http-port", str(http_port))
    loopback_host(args)
    print(f"check-readme: $ {shlex.join(args)}", flush=True)
    server = Process(args)
    try:
        server.wait_line(lambda l: l == "ready", "waiting for the server to be ready", START_TIMEOUT)
    except Failed as e:
        if server.proc.poll() is None:
            server.stop()
        raise Failed(f"{e}\n--- what it printed ---\n{server.output()}") from None
    return server, port, http_port


def check_server(command):
    server, port, http_port = start_server(command)
    try:
        a = LineClient(port)
        b = LineClient(port)
        w = WebClient(http_port)
        a.send("hello from a line client")
        b.expect(f"<{a.name}> hello from a line client")
        w.expect(f"<{a.name}> hello from a line client")
        w.send("hello from the web")
        a.expect(f"<{w.name}> hello from the web")
        b.expect(f"<{w.name}> hello from the web")
        status = server.stop()
        if status != 0:
            raise Failed(f"exit status {status} after SIGTERM")
        print(f"check-readme: ok: two line clients and a WebSocket client chatted on {command}", flush=True)
    except (Failed, OSError) as e:
        if server.proc.poll() is None:
            server.stop()
        raise Failed(f"{e}\n--- what it printed ---\n{server.output()}") from None


def check_prints(command):
    """`--help` and `--version` start nothing: they must print and exit 0."""
    args = shlex.split(command)
    print(f"check-readme: $ {shlex.join(args)}", flush=True)
    proc = Process(args)
    try:
        status = proc.proc.wait(START_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.stop()
        raise Failed(f"{command} did not exit")
    proc.reader.join(TIMEOUT)  # all of its output
    out = proc.output()
    if status != 0 or "chatd" not in out:
        raise Failed(f"{command} exited {status}; it printed:\n{out}")
    print(f"check-readme: ok: {command} printed and exited 0", flush=True)


def check_client(command, run_command):
    server, port, _ = start_server(run_command)
    try:
        listener = LineClient(port)
        args = shlex.split(command)
        set_flag(args, "--port", str(port))
        loopback_host(args)
        print(f"check-readme: $ {shlex.join(args)}", flush=True)
        chat = Process(args, stdin="/nick readme\nhello from chat\n")
        try:
            listener.expect("<readme> hello from chat")
            status = chat.proc.wait(START_TIMEOUT)
            out = chat.output()
            if status != 0 or "*** bye" not in out:
                raise Failed(f"chat exited {status}; its output:\n{out}")
        except (Failed, OSError) as e:
            if chat.proc.poll() is None:
                chat.stop()
            raise Failed(f"{e}\n--- chat printed ---\n{chat.output()}") from None
        server.stop()
        print(f"check-readme: ok: {command} sent a line in pipe mode", flush=True)
    except (Failed, OSError) as e:
        if server.proc.poll() is None:
            server.stop()
        raise Failed(f"{e}\n--- the server printed ---\n{server.output()}") from None


def flood_blocks():
    """(file, line number, text) of every ```sh block using scripts/flood.sh."""
    found = []
    for doc in DOCS:
        fence, lines, start = None, [], 0
        with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.startswith("```"):
                    if fence is None:
                        fence, lines, start = line.strip(), [], n
                    else:
                        if fence == "```sh" and any("scripts/flood.sh" in l for l in lines):
                            found.append((doc, start, "".join(lines)))
                        fence = None
                elif fence is not None:
                    lines.append(line)
    return found


def flood_script(text, port, http_port):
    """The block as bash: ports swapped, a wait after a background server."""
    out = ["set -euo pipefail"]
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        line = re.sub(r"--port 3000\b", f"--port {port}", line)
        if "scripts/flood.sh" in line and "--port" not in line:
            line = line.replace("scripts/flood.sh", f"scripts/flood.sh --port {port}", 1)
        first = line.split()[0]
        if (first == "chatd" or first.endswith("/chatd")) and "--http-port" not in line:
            line = line.replace(f"--port {port}", f"--port {port} --http-port {http_port}", 1)
        out.append(line)
        code = re.sub(r"\s+#.*$", "", line)
        if re.search(r"&(\s|$)", code) and "&&" not in code:
            out.append(
                f"for _ in $(seq 600); do (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && break; sleep 0.1; done"
            )
    return "\n".join(out) + "\n"


def check_flood(doc, n, text):
    script = flood_script(text, free_port(), free_port())
    print(f"check-readme: {doc}:{n}: the flood block, as bash:\n{script}", flush=True)
    proc = Process(["bash", "-c", script])
    try:
        status = proc.proc.wait(START_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.stop()
        raise Failed(f"{doc}:{n}: the flood block did not finish\n{proc.output()}")
    # A server it started in the background must not outlive it (the
    # block's own `kill` has stopped it when all went well).
    try:
        os.killpg(proc.proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    proc.reader.join(TIMEOUT)
    if status != 0:
        raise Failed(f"{doc}:{n}: the flood block exited {status}; it printed:\n{proc.output()}")
    print(f"check-readme: ok: the flood block of {doc}:{n} ran as written", flush=True)


def main():
    try:
        run_command, all_commands = commands()
        if "--list" in sys.argv:
            for doc, n, c in all_commands:
                print(f"{doc}:{n}: {c}")
            return 0
        # Every binary built first: a `cargo run --bin chat` that compiles
        # for minutes would otherwise outlast the wait for its line.
        print("check-readme: $ cargo build --release --bins", flush=True)
        build = subprocess.run(["cargo", "build", "--release", "--bins"], cwd=ROOT)
        if build.returncode != 0:
            raise Failed("cargo build --release --bins failed")
        for doc, n, command in all_commands:
            what = binary(shlex.split(command))
            print(f"check-readme: {doc}:{n}: {command}", flush=True)
            if what == "chatd" and ({"--help", "-h", "--version", "-V"} & set(shlex.split(command))):
                check_prints(command)
            elif what == "chatd":
                check_server(command)
            elif what == "chat":
                check_client(command, run_command[2])
            else:
                raise Failed(f"{doc}:{n}: no check for `cargo run` of {what!r}; add one here")
        blocks = flood_blocks()
        if not any(doc == "README.md" for doc, _, _ in blocks):
            raise Failed("README.md has no ```sh block running scripts/flood.sh")
        for doc, n, text in blocks:
            check_flood(doc, n, text)
    except Failed as e:
        print(f"check-readme: FAILED: {e}", file=sys.stderr, flush=True)
        return 1
    print(f"check-readme: {len(all_commands)} commands and {len(blocks)} flood blocks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
