#!/usr/bin/env python3
"""The loop's stall when a /ban rewrites a bans file of 10 000 bans.

usage: scripts/bans-stall.py CHATD [ROUNDS]   (PERF=FILE: also perf record the loop)

Starts CHATD on loopback with a bans file of 10 000 - ROUNDS bans (4.3
MB: reasons of 200 two-byte characters; the list holds 10 000), makes an
operator, and ROUNDS times sends a
/ban from it and, at once, a /who from a second client: that client's
round trip includes whatever the loop spent on the ban. Prints the round
trips (ms) without bans and with them.
"""
import os, socket, subprocess, sys, tempfile, time, statistics

chatd = sys.argv[1]
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 30
d = tempfile.mkdtemp(prefix="chatd-stall-")
bans = os.path.join(d, "bans.txt")
reason = "é" * 200
with open(bans, "w") as f:
    for i in range(10_000 - rounds):
        f.write(f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}/32\tpermanent\talice\t{reason}\n")
print(f"bans file: {os.path.getsize(bans)} bytes")
p = subprocess.Popen([chatd, "--host", "127.0.0.1", "--port", "0", "--no-http",
                      "--oper-password", "sesame", "--bans-file", bans,
                      "--limit-exempt", "127.0.0.0/8"],
                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
addr = None
for line in p.stdout:
    if "listening on " in line:
        addr = line.split("listening on ")[1].split()[0]
        break
host, port = addr.rsplit(":", 1)
perf = None
if os.environ.get("PERF"):
    perf = subprocess.Popen(["perf", "record", "-F", "2000", "-g", "-t", str(p.pid), "-o", os.environ["PERF"]],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)

def client():
    s = socket.create_connection((host, int(port)))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = s.makefile("rb")
    f.readline()
    return s, f

def until(f, pred):
    while True:
        l = f.readline().decode()
        if pred(l):
            return l

op, opf = client()
w, wf = client()
op.sendall(b"/oper sesame\n")
until(opf, lambda l: "operator" in l)

def rtt(ban):
    if ban is not None:
        op.sendall(f"/ban 192.0.{ban // 256}.{ban % 256} 1h x\n".encode())
    t = time.perf_counter()
    w.sendall(b"/who\n")
    until(wf, lambda l: l.startswith("*** #"))
    took = (time.perf_counter() - t) * 1000
    if ban is not None:
        until(opf, lambda l: l.startswith("*** banned"))
    return took

base = [rtt(None) for _ in range(rounds)]
banned = [rtt(i) for i in range(rounds)]
for name, xs in (("no ban", base), ("with a /ban", banned)):
    xs = sorted(xs)
    print(f"{name:12} median {statistics.median(xs):6.2f} ms  p90 {xs[int(len(xs) * 0.9)]:6.2f} ms  max {xs[-1]:6.2f} ms")
if perf:
    perf.send_signal(2)
    perf.wait()
p.terminate()
p.wait()
