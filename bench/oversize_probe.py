#!/usr/bin/env python3
"""Over-context prompts against a running `dsvl serve`: time and memory of refusing them.

Sends one prompt of --big-mb MB of "a" (alone), then --clients concurrent prompts of --mb MB,
then --rounds rounds of the same; reports each phase's wall time, the statuses, and the
server's resident memory (VmRSS) and peak (VmHWM) from /proc/PID/status. Stdlib only; loopback.

    dsvl serve --model M --port 8080 & python3 bench/oversize_probe.py --port 8080 --pid $!
"""

import argparse
import http.client
import json
import threading
import time


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def post(port, body):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    code = None
    try:
        code = json.loads(data)["error"]["code"]
    except Exception:
        pass
    return r.status, code


def prompt(mb):
    return json.dumps({"temperature": 0, "messages": [{"role": "user", "content": "a" * (mb << 20)}]})


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--pid", type=int, required=True, help="the server's process id")
    p.add_argument("--big-mb", type=int, default=16)
    p.add_argument("--mb", type=int, default=8)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    mib = lambda kib: kib / 1024
    base = status_kib(a.pid, "VmRSS")
    print(f"baseline RSS {mib(base):.0f} MiB, peak so far {mib(status_kib(a.pid, 'VmHWM')):.0f} MiB")
    body = prompt(a.big_mb)
    t = time.perf_counter()
    res = post(a.port, body)
    took = time.perf_counter() - t
    print(f"one {a.big_mb} MB prompt: {res} in {took:.3f} s; RSS {mib(status_kib(a.pid, 'VmRSS')):.0f} MiB, "
          f"peak {mib(status_kib(a.pid, 'VmHWM')):.0f} MiB (+{mib(status_kib(a.pid, 'VmHWM') - base):.0f})")
    body = prompt(a.mb)
    for r in range(a.rounds):
        out = []
        t = time.perf_counter()
        threads = [threading.Thread(target=lambda: out.append(post(a.port, body))) for _ in range(a.clients)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        took = time.perf_counter() - t
        statuses = sorted(set(out))
        time.sleep(0.5)
        print(f"round {r + 1}: {a.clients} x {a.mb} MB: {statuses} in {took:.2f} s; RSS after "
              f"{mib(status_kib(a.pid, 'VmRSS')):.0f} MiB (baseline {mib(base):.0f}), "
              f"peak {mib(status_kib(a.pid, 'VmHWM')):.0f} MiB")


if __name__ == "__main__":
    main()
