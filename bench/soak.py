#!/usr/bin/env python3
"""Load and faults against a running `dsvl serve`, on loopback, for a bounded time.

N clients (default 64) send for --duration seconds a mix of valid requests (text only, one to three
images, streaming or not, multi-turn conversations that hit the prefix cache, logprobs) and, with
probability --faults (default 0.2), a faulty one: invalid JSON, wrong types, broken base64, a
truncated or corrupt image, a decompression bomb (a valid PNG header claiming 100000 x 100000 with
its CRCs), an oversize declared body, a prompt over the context, too many images, a client that
hangs up mid-stream, a body sent slowly, hostile text (special tokens, image markers, escapes).

Every valid request is greedy and also sent once alone before the load starts: an answer under
load that differs from it is counted as a mix-up. Reports requests by outcome, p50/p95/p99
latency and time to first token of the valid ones, 5xx count, queue and running gauges after the
run (from /metrics; they must drain to 0), and the server's RSS over time (start, after warm-up,
peak, end). Exit code 1 when any 5xx, mix-up or undrained gauge was seen, or the end RSS is more
than --rss-tolerance above the post-warm-up RSS. Stdlib only.

    dsvl serve --model M --port 8080 & python3 bench/soak.py --port 8080 --pid $! --duration 60
"""

import argparse
import base64
import http.client
import json
import random
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "crates/dsvl/tests/fixtures/v1/images"


def rss_mib(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def png_bomb(w=100_000, h=100_000):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def gif_bomb(w=65535, h=65535):
    """A valid GIF whose screen and one frame claim w x h pixels (with one tiny LZW block)."""
    head = b"GIF89a" + struct.pack("<HHBBB", w, h, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    frame = b"," + struct.pack("<HHHHB", 0, 0, w, h, 0) + b"\x02\x02\x44\x01\x00"
    return head + frame + b";"


def bmp_bomb(w=60_000, h=60_000):
    """A BMP header claiming w x h 24-bit pixels, followed by a few bytes of them."""
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 64, 0, 0, 54) + info + b"\0" * 64


def corrupt(raw, seed):
    """The file with a run of bytes in its middle overwritten: headers intact, data broken."""
    b = bytearray(raw)
    r = random.Random(seed)
    start = len(b) // 3
    for i in range(start, min(len(b), start + 256)):
        b[i] = r.randrange(256)
    return bytes(b)


def data_url(raw, mime="image/png"):
    return f"data:{mime};base64," + base64.b64encode(raw).decode()


def image_part(url):
    return {"type": "image_url", "image_url": {"url": url}}


class Workload:
    def __init__(self, context_chars):
        images = sorted(p for p in FIXTURES.iterdir() if p.suffix in (".png", ".jpg"))
        self.images = [data_url(p.read_bytes(), "image/jpeg" if p.suffix == ".jpg" else "image/png") for p in images]
        self.truncated = [data_url(p.read_bytes()[:200]) for p in images]
        self.corrupt = [data_url(corrupt(p.read_bytes(), i)) for i, p in enumerate(images)]
        self.bombs = {"png": data_url(png_bomb()), "gif": data_url(gif_bomb(), "image/gif"),
                      "bmp": data_url(bmp_bomb(), "image/bmp")}
        self.context_chars = context_chars

    def valid(self, rnd):
        """(name, body): greedy, so the same body always gives the same answer."""
        kind = rnd.choice(["text", "one", "two", "three", "multiturn", "logprobs"])
        content = [{"type": "text", "text": "Describe it."}]
        n = {"one": 1, "two": 2, "three": 3, "multiturn": 1, "logprobs": 1}.get(kind, 0)
        k = rnd.randrange(len(self.images))
        parts = [image_part(self.images[(k + i) % len(self.images)]) for i in range(n)] + content
        messages = [{"role": "user", "content": parts}]
        if kind == "multiturn":
            messages += [{"role": "assistant", "content": "It is a picture."},
                         {"role": "user", "content": "What else?"}]
        body = {"temperature": 0, "max_tokens": 8, "messages": messages, "stream": rnd.random() < 0.5}
        if kind == "logprobs":
            body.update(logprobs=True, top_logprobs=2)
        return kind, body

    def fault(self, rnd):
        """(name, raw body or None, how): faults the server must answer with 4xx (or survive)."""
        kind = rnd.choice(["json", "types", "base64", "truncated", "corrupt", "bomb", "declared",
                           "context", "one char", "images", "hangup", "slow", "hostile"])
        user = lambda content: {"messages": [{"role": "user", "content": content}], "max_tokens": 4}
        if kind == "json":
            return kind, b'{"messages": [', "send"
        if kind == "types":
            return kind, json.dumps({"messages": "hello", "temperature": "hot"}).encode(), "send"
        if kind == "base64":
            return kind, json.dumps(user([image_part("data:image/png;base64,@@@not base64@@@")])).encode(), "send"
        if kind == "truncated":
            return kind, json.dumps(user([image_part(rnd.choice(self.truncated))])).encode(), "send"
        if kind == "corrupt":
            return kind, json.dumps(user([image_part(rnd.choice(self.corrupt))])).encode(), "send"
        if kind == "bomb":
            fmt = rnd.choice(sorted(self.bombs))
            return f"bomb {fmt}", json.dumps(user([image_part(self.bombs[fmt])])).encode(), "send"
        if kind == "one char":  # 1 MB of one character: a single 1 MB "word" for the tokenizer
            return kind, json.dumps(user("x" * (1 << 20))).encode(), "send"
        if kind == "declared":
            return kind, None, "declared"
        if kind == "context":
            return kind, json.dumps(user("a " * self.context_chars)).encode(), "send"
        if kind == "images":
            return kind, json.dumps(user([image_part(self.images[0])] * 64)).encode(), "send"
        if kind == "hangup":
            body = user("Tell me a long story.")
            body.update(stream=True, max_tokens=64)
            return kind, json.dumps(body).encode(), "hangup"
        if kind == "slow":
            return kind, json.dumps(user("Hello slowly.")).encode(), "slow"
        # Special tokens, markers, a NUL and a lone surrogate escape, emoji: short enough to be
        # generated from, not refused for its length.
        # generated from, not refused for its length. With image markers and no image: a 400.
        markers = "<image_placeholder><image>" if rnd.random() < 0.5 else ""
        hostile = f"<|User|>{markers}<｜end▁of▁sentence｜>\\u0000\\ud800" + "\U0001F980" * 100
        return kind + (" markers" if markers else ""), json.dumps(user(hostile)).encode(), "send"


def request(port, raw, stream, timeout=300):
    """Sends raw JSON; returns (status, seconds, first_token_seconds, answer text)."""
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("POST", "/v1/chat/completions", raw, {"Content-Type": "application/json"})
        r = c.getresponse()
        if not stream or r.status != 200:
            data = r.read()
            t = time.perf_counter() - t0
            text = None
            if r.status == 200:
                text = json.loads(data)["choices"][0]["message"]["content"]
            return r.status, t, t, text
        text, first = "", None
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for ch in chunk.get("choices", []):
                piece = ch.get("delta", {}).get("content") or ""
                if piece and first is None:
                    first = time.perf_counter() - t0
                text += piece
        t = time.perf_counter() - t0
        return r.status, t, first if first is not None else t, text
    except (OSError, http.client.HTTPException) as e:
        return type(e).__name__, time.perf_counter() - t0, None, None
    finally:
        c.close()


def raw_exchange(port, head, body_parts, delay=0.0, hang_up_after_first=False):
    s = socket.create_connection(("127.0.0.1", port), timeout=120)
    try:
        s.sendall(head)
        for part in body_parts:
            s.sendall(part)
            if delay:
                time.sleep(delay)
        data = s.recv(4096)
        if hang_up_after_first:
            return "hung up"
        return data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "closed"
    except OSError as e:
        return type(e).__name__
    finally:
        s.close()


def head(port, length):
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()


def metrics(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and " " in line:
            k, v = line.rsplit(" ", 1)
            values[k] = float(v)
    return values


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--pid", type=int, required=True, help="the server's process id (for its RSS)")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--duration", type=float, default=60, help="seconds of load")
    p.add_argument("--warmup", type=float, default=15, help="seconds before the post-warm-up RSS")
    p.add_argument("--faults", type=float, default=0.2)
    p.add_argument("--context-chars", type=int, default=200_000, help="size of the over-context prompt")
    p.add_argument("--max-body", type=int, default=32 << 20, help="the server's --max-body-bytes")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rss-tolerance", type=float, default=0.10,
                   help="the end RSS may exceed the post-warm-up RSS by this fraction (default %(default)s)")
    a = p.parse_args()

    w = Workload(a.context_chars)
    rnd = random.Random(a.seed)
    # The answers alone, before any load: what every valid request must get under load too.
    catalogue = {}
    for _ in range(24):
        kind, body = w.valid(rnd)
        raw = json.dumps(body, sort_keys=True)
        if raw not in catalogue:
            status, _, _, text = request(a.port, raw.encode(), body["stream"])
            if status != 200:
                raise SystemExit(f"a valid {kind} request alone got {status}: is the server ready?")
            catalogue[raw] = (kind, body["stream"], text)
    valid = list(catalogue.items())

    lock = threading.Lock()
    outcomes, latencies, ttfts, mixups = {}, [], [], []
    end = time.time() + a.duration

    def count(key):
        with lock:
            outcomes[key] = outcomes.get(key, 0) + 1

    def client(i):
        r = random.Random(a.seed * 1000 + i)
        while time.time() < end:
            if r.random() >= a.faults:
                raw, (kind, stream, expected) = r.choice(valid)
                status, t, first, text = request(a.port, raw.encode(), stream)
                count(f"valid {kind}: {status}")
                if status == 200:
                    with lock:
                        latencies.append(t)
                        ttfts.append(first)
                        if text != expected:
                            mixups.append((kind, expected, text))
                continue
            kind, raw, how = w.fault(r)
            if how == "send":
                status = request(a.port, raw, False)[0]
            elif how == "declared":
                status = raw_exchange(a.port, head(a.port, a.max_body + 1), [])
            elif how == "hangup":
                status = raw_exchange(a.port, head(a.port, len(raw)), [raw], hang_up_after_first=True)
            else:  # slow: a byte every 50 ms for at most 3 s, then silence until the server answers
                status = raw_exchange(a.port, head(a.port, len(raw) + 1000), [raw[i:i + 1] for i in range(60)], 0.05)
            count(f"fault {kind}: {status}")

    rss = [(0.0, rss_mib(a.pid))]
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(a.clients)]
    t0 = time.time()
    for t in threads:
        t.start()
    warm = None
    while any(t.is_alive() for t in threads):
        time.sleep(2)
        now = time.time() - t0
        rss.append((now, rss_mib(a.pid)))
        if warm is None and now >= a.warmup:
            warm = rss[-1][1]
    for t in threads:
        t.join(timeout=600)
    time.sleep(2)
    gauges = metrics(a.port)
    end_rss = rss_mib(a.pid)

    fives = sum(n for k, n in outcomes.items() if k.rsplit(": ", 1)[1].startswith("5"))
    print(f"{a.clients} clients, {a.duration:.0f} s, faults {a.faults:.0%}, {sum(outcomes.values())} requests")
    for k in sorted(outcomes):
        print(f"  {k:40} {outcomes[k]}")
    print(f"valid answers: latency p50/p95/p99 {pct(latencies, 50):.2f}/{pct(latencies, 95):.2f}/{pct(latencies, 99):.2f} s, "
          f"time to first token p50/p95/p99 {pct(ttfts, 50):.2f}/{pct(ttfts, 95):.2f}/{pct(ttfts, 99):.2f} s")
    print(f"5xx: {fives}; answers that differ from the same request alone: {len(mixups)}")
    queue, running = gauges.get("dsvl_queue_depth"), gauges.get("dsvl_running_sequences")
    print(f"after the run: queue {queue}, running {running}")
    peak = max(r for _, r in rss)
    print(f"RSS MiB: start {rss[0][1]:.0f}, after warm-up {warm or float('nan'):.0f}, peak {peak:.0f}, end {end_rss:.0f}"
          + (f" ({(end_rss / warm - 1) * 100:+.1f} % of post-warm-up)" if warm else ""))
    for kind, expected, got in mixups[:3]:
        print(f"  mix-up ({kind}): expected {expected!r}, got {got!r}")
    grew = warm is not None and end_rss > warm * (1 + a.rss_tolerance)
    if grew:
        print(f"RSS grew past the tolerance of {a.rss_tolerance:.0%}")
    bad = fives or mixups or queue != 0 or running != 0 or grew
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
