#!/usr/bin/env python3
"""Throughput of a running `dsvl serve` under N concurrent streaming clients.

Each of --streams client threads sends streaming chat completions (one image and a question,
greedy, `ignore_eos` so every answer is exactly --max-tokens long) back to back until
--requests have been sent in all. Prints the aggregate generated tokens/s over the whole run,
time to first token and per-stream decode rate (median and p95), and writes them as JSON with
--json. Python 3.8+ standard library only: it runs on any machine that can reach the server.

    dsvl serve --model /tmp/dsvl-1.3b-random --max-running 32 --port 8080 &
    python3 bench/serve_load.py --base-url http://127.0.0.1:8080 --streams 32 --requests 64 \
        --image examples/chart.png --max-tokens 128 --json serve-32.json

Tokens are counted from the `usage` of each stream's last chunk (`stream_options.include_usage`),
so a server that stops early or returns fewer tokens is counted as it is; a request that fails
is reported and makes the exit status 1.
"""

import argparse
import base64
import http.client
import json
import mimetypes
import statistics
import sys
import threading
import time
import urllib.parse

QUESTION = "Describe this chart: what do the axes show, which bar is the tallest and which is the shortest?"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8080",
                   help="the server, with or without /v1 (default %(default)s)")
    p.add_argument("--streams", type=int, default=32, help="concurrent clients (default %(default)s)")
    p.add_argument("--requests", type=int, default=0,
                   help="requests in all (default: 2 per stream)")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens per answer (default %(default)s)")
    p.add_argument("--image", help="image file sent with every request (default: no image, text only)")
    p.add_argument("--question", default=QUESTION)
    p.add_argument("--model", default="", help="the `model` field (default: what /v1/models lists first)")
    p.add_argument("--api-key", default=None, help="sent as `Authorization: Bearer KEY`")
    p.add_argument("--response-format", default=None,
                   help="a JSON object sent as `response_format` (structured output), e.g. "
                        "'{\"type\":\"json_object\"}': compare with and without to see its cost")
    p.add_argument("--wait", type=float, default=600.0,
                   help="seconds to wait for /health to answer 200 first (default %(default)s)")
    p.add_argument("--json", help="also write the results to this file")
    a = p.parse_args(argv)
    if a.streams < 1 or a.max_tokens < 2:
        p.error("--streams must be at least 1 and --max-tokens at least 2")
    if a.requests == 0:
        a.requests = 2 * a.streams
    if a.requests < a.streams:
        p.error("--requests must be at least --streams (every client sends at least one)")
    return a


class Server:
    def __init__(self, base_url, api_key):
        u = urllib.parse.urlsplit(base_url if "://" in base_url else "http://" + base_url)
        if u.scheme != "http":
            raise SystemExit(f"serve_load.py: only http:// servers are supported, not {base_url}")
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.prefix = u.path.rstrip("/")
        if self.prefix.endswith("/v1"):
            self.prefix = self.prefix[: -len("/v1")]
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def connect(self, timeout=3600):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def get(self, path):
        c = self.connect(timeout=10)
        try:
            c.request("GET", self.prefix + path, headers=self.headers)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def wait_healthy(self, seconds):
        deadline = time.monotonic() + seconds
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                status, body = self.get("/health")
                if status == 200:
                    return
                last = f"HTTP {status}: {body[:200]!r}"
            except OSError as e:
                last = str(e)
            time.sleep(0.5)
        raise SystemExit(f"serve_load.py: the server at {self.host}:{self.port} is not healthy after "
                         f"{seconds:.0f} s ({last}); is `dsvl serve` running?")


def image_part(path):
    mime = mimetypes.guess_type(path)[0] or "application/octet-stream"
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode()
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}


def one_request(server, body):
    """Sends one streaming request; returns (ttft_s, end_s, completion_tokens, token_times)."""
    c = server.connect()
    try:
        t0 = time.monotonic()
        c.request("POST", server.prefix + "/v1/chat/completions", body=body, headers=server.headers)
        r = c.getresponse()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {r.read()[:300]!r}")
        first, times, usage = None, [], None
        while True:
            line = r.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            data = line[len(b"data: "):]
            if data == b"[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                raise RuntimeError(f"error event: {event['error']}")
            if event.get("usage"):
                usage = event["usage"]
            for choice in event.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    now = time.monotonic()
                    times.append(now)
                    if first is None:
                        first = now
        end = time.monotonic()
        if usage is None:
            raise RuntimeError("the stream ended without a usage chunk")
        return (first or end) - t0, end, usage["completion_tokens"], times
    finally:
        c.close()


def main(argv=None):
    a = parse_args(argv)
    server = Server(a.base_url, a.api_key)
    server.wait_healthy(a.wait)
    model = a.model
    if not model:
        status, body = server.get("/v1/models")
        if status == 200:
            data = json.loads(body).get("data") or []
            model = data[0]["id"] if data else ""
    content = ([image_part(a.image)] if a.image else []) + [{"type": "text", "text": a.question}]
    request = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": a.max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if a.response_format:
        request["response_format"] = json.loads(a.response_format)
    body = json.dumps(request).encode()

    lock = threading.Lock()
    remaining = [a.requests]
    results, failures = [], []

    def client():
        while True:
            with lock:
                if remaining[0] == 0:
                    return
                remaining[0] -= 1
            try:
                ttft, end, tokens, times = one_request(server, body)
                rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 2 and times[-1] > times[0] else None
                with lock:
                    results.append({"ttft_s": ttft, "end": end, "tokens": tokens, "decode_tok_s": rate})
            except Exception as e:  # noqa: BLE001 - every failure is reported, none is fatal to the run
                with lock:
                    failures.append(str(e))

    print(f"serve_load: {a.requests} requests over {a.streams} concurrent streams, {a.max_tokens} tokens each, "
          f"{'image ' + a.image if a.image else 'text only'}", file=sys.stderr)
    threads = [threading.Thread(target=client, daemon=True) for _ in range(a.streams)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - start

    tokens = sum(r["tokens"] for r in results)
    ttfts = sorted(r["ttft_s"] * 1e3 for r in results)
    rates = sorted(r["decode_tok_s"] for r in results if r["decode_tok_s"])

    def pct(xs, q):
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else None

    report = {
        "tool": "bench/serve_load.py",
        "base_url": a.base_url,
        "model": model,
        "streams": a.streams,
        "requests": a.requests,
        "completed": len(results),
        "failed": len(failures),
        "failures": failures[:10],
        "max_tokens": a.max_tokens,
        "image": a.image,
        "wall_s": wall,
        "generated_tokens": tokens,
        "generated_tokens_per_s": tokens / wall if wall > 0 else None,
        "ttft_ms_median": statistics.median(ttfts) if ttfts else None,
        "ttft_ms_p95": pct(ttfts, 0.95),
        "stream_decode_tok_s_median": statistics.median(rates) if rates else None,
        "stream_decode_tok_s_p5": pct(rates, 0.05),
    }
    fmt = lambda v, p=1: "n/a" if v is None else f"{v:.{p}f}"  # noqa: E731
    print(f"  completed               {len(results)}/{a.requests} ({len(failures)} failed)")
    print(f"  generated tokens        {tokens} in {wall:.2f} s")
    print(f"  aggregate throughput    {fmt(report['generated_tokens_per_s'])} tokens/s")
    print(f"  TTFT median / p95       {fmt(report['ttft_ms_median'])} / {fmt(report['ttft_ms_p95'])} ms")
    print(f"  per-stream decode       {fmt(report['stream_decode_tok_s_median'], 2)} tokens/s median, "
          f"{fmt(report['stream_decode_tok_s_p5'], 2)} at p5")
    for f in failures[:10]:
        print(f"  failure: {f}", file=sys.stderr)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
