#!/usr/bin/env python3
"""Times the official DeepSeek-VL2 code (CPU, float32) on dsvl bench's VL2 workload, then dsvl
itself on the same checkpoint, and prints both rows and the ratios.

The official code runs as in tools/fixtures/official_v2.py (its CPU stand-in for xformers, the
DeepSeek-VL2 repository on PYTHONPATH, transformers < 4.48; see shared specs reference-v2.md):

    PYTHONPATH=/path/to/DeepSeek-VL2 python bench/reference_vl2.py \\
        --model /tmp/dsvl-vl2-tiny-random --dsvl target/release/dsvl --decode-tokens 16

The workload is the one `dsvl bench` prints in its JSON (question text, image, token count); the
script runs dsvl first and feeds its question to the reference, and warns when the prompt
lengths differ.
"""
import argparse
import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def run_dsvl(a, out_json, quant=None):
    cmd = [str(a.dsvl), "bench", "--model", str(a.model), "--dtype", "f32", "--image", str(a.image),
           "--decode-tokens", str(a.decode_tokens), "--repeats", "1", "--threads", str(a.threads),
           "--no-second-turn", "--json", str(out_json)]
    if quant:
        cmd += ["--quant", quant]
    log("+ " + " ".join(cmd))
    subprocess.run(cmd, check=True)
    return json.loads(Path(out_json).read_text())


def run_reference(a, question):
    os.environ["DSVL_THREADS"] = str(a.threads)
    sys.path.insert(0, str(REPO / "tools/fixtures"))
    import torch
    import official_v2 as off  # patches xformers, imports deepseek_vl2

    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        proc = off.DeepseekVLV2Processor.from_pretrained(str(a.model))
    model = off.AutoModelForCausalLM.from_pretrained(str(a.model), torch_dtype=torch.float32).eval()
    load_ms = (time.perf_counter() - t) * 1e3

    def one(n_new):
        t0 = time.perf_counter()
        conv = [{"role": "<|User|>", "content": f"<image>{question}", "images": [str(a.image)]},
                {"role": "<|Assistant|>", "content": ""}]
        imgs = off.load_pil_images(conv)
        with contextlib.redirect_stdout(io.StringIO()):
            one_ = proc.process_one(conversations=conv, images=imgs, inference_mode=True, system_prompt="")
            batch = proc.batchify([one_]).to("cpu", dtype=torch.float32)
        t1 = time.perf_counter()
        with torch.inference_mode():
            emb = model.prepare_inputs_embeds(input_ids=batch.input_ids, images=batch.images,
                                              images_seq_mask=batch.images_seq_mask,
                                              images_spatial_crop=batch.images_spatial_crop)
            t2 = time.perf_counter()
            s = batch.input_ids.shape[1]
            out = model.language(inputs_embeds=emb, attention_mask=batch.attention_mask, use_cache=True)
            tok = int(out.logits[0, -1].argmax())
            t3 = time.perf_counter()
            cache, stamps = out.past_key_values, [t3]
            for k in range(n_new - 1):
                o = model.language(input_ids=torch.tensor([[tok]]),
                                   attention_mask=torch.ones(1, s + k + 1, dtype=torch.long),
                                   past_key_values=cache, position_ids=torch.tensor([[s + k]]),
                                   use_cache=True)
                cache, tok = o.past_key_values, int(o.logits[0, -1].argmax())
                stamps.append(time.perf_counter())
        decode = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
        return {"preprocess_ms": (t1 - t0) * 1e3, "vision_ms": (t2 - t1) * 1e3,
                "prefill_tokens_per_s": s / (t3 - t2), "ttft_ms": (t3 - t0) * 1e3,
                "decode_tokens_per_s": decode, "prompt_tokens": s}

    log("reference: warm-up")
    one(2)
    log("reference: run")
    r = one(a.decode_tokens)
    r["load_ms"] = load_ms
    r["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    r["versions"] = {"torch": torch.__version__, "transformers": off.transformers.__version__}
    return r


def fmt(x, p=1):
    return "n/a" if x is None or x != x else f"{x:.{p}f}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path,
                   help="DeepSeek-VL2 folder (cargo xtask make-checkpoint --shape vl2-tiny "
                   "--from crates/dsvl/tests/fixtures/v2/models/vl2-tiny-random --out DIR)")
    p.add_argument("--dsvl", type=Path, default=REPO / "target/release/dsvl")
    p.add_argument("--image", type=Path, default=REPO / "examples/chart.png")
    p.add_argument("--decode-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--quants", default="", help="also run dsvl with these --quant formats, e.g. q8_0,q4_k")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        rows["dsvl f32"] = run_dsvl(a, Path(tmp) / "f32.json")
        for q in filter(None, a.quants.split(",")):
            rows[f"dsvl f32 + {q}"] = run_dsvl(a, Path(tmp) / f"{q}.json", q)
    question = rows["dsvl f32"]["workload"]["question"]
    ref = run_reference(a, question)
    ours = rows["dsvl f32"]["workload"]["prompt_tokens"]
    if ref["prompt_tokens"] != ours:
        log(f"warning: prompt lengths differ: reference {ref['prompt_tokens']}, dsvl {ours}")
    print(f"\nworkload: {a.image.name}, {ref['prompt_tokens']} prompt tokens, {a.decode_tokens} new tokens, "
          f"{a.threads} threads; {ref['versions']}")
    print(f"{'implementation':<24} {'load s':>7} {'vision ms':>10} {'prefill t/s':>12} {'TTFT ms':>10} "
          f"{'decode t/s':>11} {'peak GiB':>9}")
    print(f"{'official DeepSeek-VL2 f32':<24} {fmt(ref['load_ms'] / 1e3):>7} {fmt(ref['vision_ms']):>10} "
          f"{fmt(ref['prefill_tokens_per_s']):>12} {fmt(ref['ttft_ms']):>10} {fmt(ref['decode_tokens_per_s'], 2):>11} "
          f"{fmt(ref['peak_rss_bytes'] / 2**30, 2):>9}")
    for name, d in rows.items():
        print(f"{name:<24} {fmt(d['load_ms'] / 1e3):>7} {fmt(d['vision_ms']):>10} "
              f"{fmt(d['prefill_tokens_per_s']):>12} {fmt(d['ttft_ms']):>10} {fmt(d['decode_tokens_per_s'], 2):>11} "
              f"{fmt((d['peak_rss_bytes'] or 0) / 2**30, 2):>9}")
        print(f"{'  speed-up':<24} {fmt(ref['load_ms'] / d['load_ms'], 2) + 'x':>7} "
              f"{fmt(ref['vision_ms'] / d['vision_ms'], 2) + 'x':>10} "
              f"{fmt(d['prefill_tokens_per_s'] / ref['prefill_tokens_per_s'], 2) + 'x':>12} "
              f"{fmt(ref['ttft_ms'] / d['ttft_ms'], 2) + 'x':>10} "
              f"{fmt(d['decode_tokens_per_s'] / ref['decode_tokens_per_s'], 2) + 'x':>11}")
    if a.json:
        a.json.write_text(json.dumps({"reference": ref, "dsvl": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
