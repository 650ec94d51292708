#!/usr/bin/env python3
"""Items per hour of `dsvl batch` against the two ways users do the same job without it.

The same N images (synthetic 640x480 photos-like PNGs, all different) and the same question,
greedy, `ignore_eos` so every answer is exactly --max-tokens long, processed:

- `run`: N sequential `dsvl run` calls (the model loaded N times), as a shell loop would;
- `serve`: one client sending them one by one to `dsvl serve` (loaded once, no batching gain);
- `batch R`: one `dsvl batch --max-running R` per R in --running (loaded once, decode steps
  shared by up to R items).

Wall time includes loading in every mode (a user's job does). Prints items/hour per mode and the
ratio of each batch run to `run` and `serve`; --json writes them. Also, with --memory, the peak
RSS of `dsvl batch` over 10 and over 1000 items (tiny answers) to show no per-item growth.
Standard library only.

    python3 bench/batch_throughput.py --dsvl target/release/dsvl --model /tmp/dsvl-1.3b-random \\
        --dtype bf16 --images 32 --max-tokens 128 --running 1,4,8,16 --json batch.json
    python3 bench/batch_throughput.py --dsvl target/release/dsvl \\
        --model crates/dsvl/tests/fixtures/v1/models/siglip-tiny --memory --modes none
"""

import argparse
import base64
import http.client
import json
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

QUESTION = "Describe this image in detail."


def png(width, height, seed):
    """A smooth random colour field with blocks: different per seed, compresses like a photo."""
    rnd = random.Random(seed)
    base = [rnd.randrange(256) for _ in range(3)]
    blocks = [(rnd.randrange(width), rnd.randrange(height), rnd.randrange(20, 200),
               [rnd.randrange(256) for _ in range(3)]) for _ in range(12)]
    rows = []
    for y in range(height):
        row = bytearray([0])
        for x in range(width):
            px = [(base[c] + x * (c + 1) // 7 + y * (3 - c) // 5) % 256 for c in range(3)]
            for bx, by, size, colour in blocks:
                if bx <= x < bx + size and by <= y < by + size:
                    px = colour
            row += bytes(px)
        rows.append(bytes(row))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"".join(rows), 6)) + chunk(b"IEND", b""))


def model_flags(a):
    flags = ["--model", a.model]
    if a.dtype:
        flags += ["--dtype", a.dtype]
    if a.quant:
        flags += ["--quant", a.quant]
    return flags


def sampling_flags(a):
    return ["--max-tokens", str(a.max_tokens), "--temperature", "0", "--ignore-eos"]


def timed(cmd, env=None):
    """Wall seconds and peak RSS (MiB) of one command; fails loudly."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed ({os.waitstatus_to_exitcode(status)}): {' '.join(cmd)}\n{err[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def run_mode(a, images):
    t = time.perf_counter()
    for img in images:
        timed([a.dsvl, "run", *model_flags(a), *sampling_flags(a), "--image", str(img),
               "<image_placeholder>" + QUESTION])
    return time.perf_counter() - t


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_mode(a, images):
    port = free_port()
    t = time.perf_counter()
    server = subprocess.Popen([a.dsvl, "serve", *model_flags(a), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/ready")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None:
                sys.exit("dsvl serve exited while loading")
            time.sleep(0.2)
        for img in images:
            url = "data:image/png;base64," + base64.b64encode(img.read_bytes()).decode()
            body = json.dumps({
                "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": QUESTION}]}],
                "temperature": 0, "max_tokens": a.max_tokens, "ignore_eos": True})
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
            c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            r = c.getresponse()
            reply = json.loads(r.read())
            if r.status != 200 or reply["usage"]["completion_tokens"] != a.max_tokens:
                sys.exit(f"serve: {r.status} {reply}")
        return time.perf_counter() - t
    finally:
        server.terminate()
        server.wait()


def batch_mode(a, images, running, out):
    out.unlink(missing_ok=True)
    wall, rss = timed([a.dsvl, "batch", *model_flags(a), *sampling_flags(a), "--prompt",
                       "<image_placeholder>" + QUESTION, "--max-running", str(running),
                       "--output", str(out), *map(str, images)])
    lines = [json.loads(l) for l in out.read_text().splitlines()]
    bad = [l for l in lines if "error" in l or l["completion_tokens"] != a.max_tokens]
    if len(lines) != len(images) or bad:
        sys.exit(f"batch: {len(lines)} lines for {len(images)} images; bad: {bad[:2]}")
    return wall, rss


def memory_check(a, work):
    """Peak RSS of one batch over 10 and over 1000 items (4 new tokens each)."""
    folder = work / "memory"
    folder.mkdir(exist_ok=True)
    for i in range(1000):
        (folder / f"{i:04d}.png").write_bytes(png(64, 48, 1000 + i))  # all different
    out = {}
    for n in (10, 1000):
        items = sorted(folder.iterdir())[:n]
        path = work / f"memory-{n}.jsonl"
        path.unlink(missing_ok=True)
        wall, rss = timed([a.dsvl, "batch", *model_flags(a), "--max-tokens", "4", "--prompt",
                           QUESTION, "--output", str(path), *map(str, items)])
        out[n] = {"items": n, "wall_s": round(wall, 2), "peak_rss_mib": round(rss, 1)}
        print(f"memory: {n:5d} items  peak RSS {rss:7.1f} MiB  ({wall:.1f} s)", flush=True)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dsvl", required=True, help="the dsvl binary (a release build)")
    p.add_argument("--model", required=True)
    p.add_argument("--dtype", default=None)
    p.add_argument("--quant", default=None)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--running", default="1,4,8,16", help="--max-running values for batch")
    p.add_argument("--modes", default="run,serve,batch",
                   help="which of run, serve, batch to time (or none)")
    p.add_argument("--memory", action="store_true", help="also the 10- vs 1000-item RSS check")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args()
    modes = set(a.modes.split(","))
    work = Path(tempfile.mkdtemp(prefix="dsvl-batch-bench-"))
    images = []
    for i in range(a.images):
        path = work / f"img-{i:03d}.png"
        path.write_bytes(png(640, 480, i))
        images.append(path)
    results = {"images": a.images, "max_tokens": a.max_tokens, "model": a.model,
               "dtype": a.dtype, "quant": a.quant, "modes": {}}

    def report(name, wall, extra=None):
        per_hour = a.images / wall * 3600
        results["modes"][name] = {"wall_s": round(wall, 1), "items_per_hour": round(per_hour, 1),
                                  **(extra or {})}
        print(f"{name:10s} {wall:8.1f} s  {per_hour:8.1f} items/h", flush=True)

    if "batch" in modes:
        for r in [int(x) for x in a.running.split(",")]:
            wall, rss = batch_mode(a, images, r, work / f"batch-{r}.jsonl")
            report(f"batch {r}", wall, {"peak_rss_mib": round(rss, 1)})
    if "serve" in modes:
        report("serve", serve_mode(a, images))
    if "run" in modes:
        report("run", run_mode(a, images))
    m = results["modes"]
    for name, v in m.items():
        if name.startswith("batch"):
            for base in ("run", "serve"):
                if base in m:
                    v[f"vs_{base}"] = round(v["items_per_hour"] / m[base]["items_per_hour"], 2)
                    print(f"{name} / {base}: {v[f'vs_{base}']:.2f}x")
    if a.memory:
        results["memory"] = memory_check(a, work)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
