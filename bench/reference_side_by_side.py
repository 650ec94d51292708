#!/usr/bin/env python3
"""dsvl against the transformers implementation, same weights, same workload, same machine.

Runs the `dsvl bench` workload (one chart image + a ~40-token question, greedy, a fixed number of
new tokens with EOS ignored) with transformers' `DeepseekVLForConditionalGeneration` (or
`DeepseekVLHybridForConditionalGeneration` for 7B-style models) on CPU, in each requested dtype,
then runs `dsvl bench --json` on the same checkpoint, and prints both rows and the ratios.

The checkpoint is an original-layout (`deepseek-ai/*`) folder, e.g. one written in the repository
by `cargo xtask make-checkpoint --shape 1.3b --from crates/dsvl/tests/fixtures/v1/models/siglip-tiny
--out DIR`. Its tensors are renamed to the transformers layout on
the fly (v1 spec §12.3: SigLIP q/k/v split, pos_embed squeezed, attention-pool and the unused
high/low LayerNorms dropped).

Timing, both sides:
  TTFT       = preprocess (tokenize + image decode/resize/normalise) + vision + prefill, up to the
               first generated token;
  decode     = (tokens - 1) / (time of last token - time of first token);
  medians over --repeats runs after one warm-up run; the same thread count on both sides.

See bench/README.md for the venv (pinned versions) and BENCHMARKS.md for the table.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMAGE_ID = 100015
BOS_ID = 100000
TOKENS_PER_IMAGE = 576
SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Original layout -> transformers layout (v1 §12.3)

def siglip_key(suffix):
    fixed = {
        "pos_embed": "embeddings.position_embedding.weight",
        "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
        "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
        "norm.weight": "post_layernorm.weight",
        "norm.bias": "post_layernorm.bias",
    }
    if suffix in fixed:
        return fixed[suffix]
    parts = suffix.split(".")
    if parts[0] != "blocks":
        raise KeyError(suffix)
    rest = ".".join(parts[2:])
    m = {
        "norm1": "layer_norm1", "norm2": "layer_norm2", "attn.proj": "self_attn.out_proj",
        "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2", "attn.qkv": "self_attn.QKV",
    }
    stem, leaf = rest.rsplit(".", 1)
    return f"encoder.layers.{parts[1]}.{m[stem]}.{leaf}"


def sam_key(suffix):
    p = "model.high_res_vision_model.vision_encoder."
    if suffix == "pos_embed":
        return p + "pos_embed"
    if suffix == "hd_alpha_downsamples":
        return "model.high_res_vision_alpha"
    if suffix.startswith("patch_embed.proj."):
        return p + "patch_embed.projection." + suffix.split(".")[-1]
    parts = suffix.split(".")
    if parts[0] == "blocks":
        rest = ".".join(parts[2:]).replace("norm1.", "layer_norm1.").replace("norm2.", "layer_norm2.")
        return f"{p}layers.{parts[1]}.{rest}"
    neck = {"0.weight": "conv1.weight", "1.weight": "layer_norm1.weight", "1.bias": "layer_norm1.bias",
            "2.weight": "conv2.weight", "3.weight": "layer_norm2.weight", "3.bias": "layer_norm2.bias"}
    if parts[0] == "neck":
        return p + "neck." + neck[".".join(parts[1:])]
    if parts[0] == "neck_hd":
        return "model.high_res_vision_neck." + neck[".".join(parts[1:])]
    if parts[0] == "downsamples":
        return f"model.high_res_vision_proj.conv{int(parts[1]) + 1}.{parts[2]}"
    raise KeyError(suffix)


ALIGNER = {
    "aligner.layers.0.": "model.aligner.linear1.", "aligner.layers.2.": "model.aligner.linear2.",
    "aligner.layers.1.": "model.aligner.proj.", "aligner.high_up_proj.": "model.aligner.high_res_vision_proj.",
    "aligner.low_up_proj.": "model.aligner.vision_proj.",
}


def hf_state_dict(model_dir, hybrid, dtype):
    """Reads every shard tensor by tensor, renames, casts to `dtype`."""
    import torch
    from safetensors import safe_open

    sig = "vision_model.vision_tower_low.vision_tower." if hybrid else "vision_model.vision_tower."
    sam = "vision_model.vision_tower_high.vision_tower."
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        sys.exit(f"{model_dir}: no *.safetensors files")
    out = {}
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                if k.startswith(("vision_model.high_layer_norm.", "vision_model.low_layer_norm.")):
                    continue
                if k.startswith(sig) and k[len(sig):].startswith("attn_pool."):
                    continue
                v = st.get_tensor(k).to(dtype)
                if k.startswith("language_model.model."):
                    out["model.language_model." + k[len("language_model.model."):]] = v
                elif k == "language_model.lm_head.weight":
                    out["lm_head.weight"] = v
                elif k.startswith(sig):
                    suf = k[len(sig):]
                    nk = "model.vision_model.vision_model." + siglip_key(suf)
                    if "QKV" in nk:
                        for name, part in zip(("q_proj", "k_proj", "v_proj"), torch.chunk(v, 3, dim=0)):
                            out[nk.replace("QKV", name)] = part.contiguous()
                    elif suf == "pos_embed":
                        out[nk] = v.squeeze(0).contiguous()
                    else:
                        out[nk] = v
                elif k.startswith(sam):
                    out[sam_key(k[len(sam):])] = v
                else:
                    for a, b in ALIGNER.items():
                        if k.startswith(a):
                            out[b + k[len(a):]] = v
                            break
                    else:
                        raise KeyError(f"{f.name}: unexpected tensor {k}")
    return out


def hf_config(orig):
    """transformers config from an original config.json (real shapes, or the tiny fixtures'
    explicit width/layers/heads overrides)."""
    lc = orig["language_config"]
    text = {
        "model_type": "llama", "hidden_size": lc.get("hidden_size", 4096),
        "intermediate_size": lc.get("intermediate_size", 11008),
        "max_position_embeddings": lc.get("max_position_embeddings", 16384),
        "num_attention_heads": lc.get("num_attention_heads", 32),
        "num_hidden_layers": lc.get("num_hidden_layers", 32),
        "num_key_value_heads": lc.get("num_key_value_heads", lc.get("num_attention_heads", 32)),
        "vocab_size": lc.get("vocab_size", 102400), "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "hidden_act": "silu", "attention_bias": False, "tie_word_embeddings": False,
    }
    vp = orig["vision_config"]["params"]
    hybrid = orig["vision_config"]["cls"] == "HybridVisionTower"
    low = vp["low_res_cfg"] if hybrid else vp
    width = low.get("width", 1024)
    vision = {
        "model_type": "siglip_vision_model", "hidden_size": width,
        "intermediate_size": int(width * low.get("mlp_ratio", 4)),
        "num_attention_heads": low.get("heads", 16), "num_hidden_layers": low.get("layers", 24),
        "image_size": 384, "patch_size": 16, "num_channels": 3, "hidden_act": "gelu",
        "layer_norm_eps": 1e-6, "vision_use_head": False,
    }
    cfg = {"image_token_id": IMAGE_ID, "text_config": text, "vision_config": vision, "tie_word_embeddings": False}
    if hybrid:
        hi = vp["high_res_cfg"]
        w = hi.get("width", 768)
        cfg["high_res_vision_config"] = {
            "model_type": "sam_vision_model", "hidden_size": w, "output_channels": hi.get("prompt_embed_dim", 256),
            "num_attention_heads": hi.get("heads", 12), "num_hidden_layers": hi.get("layers", 12),
            "global_attn_indexes": hi.get("global_attn_indexes", [2, 5, 8, 11]), "window_size": 14,
            "image_size": 1024, "patch_size": 16, "num_channels": 3, "mlp_ratio": 4.0, "mlp_dim": 4 * w,
            "use_rel_pos": True, "use_abs_pos": True, "qkv_bias": True, "layer_norm_eps": 1e-6,
            "hidden_act": "gelu",
        }
    return cfg, hybrid


def image_processor(hybrid):
    if hybrid:
        from transformers import DeepseekVLHybridImageProcessor
        return DeepseekVLHybridImageProcessor(
            background_color=[127, 127, 127], high_res_background_color=[122, 116, 104],
            high_res_image_mean=CLIP_MEAN, high_res_image_std=CLIP_STD, high_res_resample=3,
            high_res_size={"height": 1024, "width": 1024}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
            min_size=14, resample=2, size={"height": 384, "width": 384})
    from transformers import DeepseekVLImageProcessor
    return DeepseekVLImageProcessor(
        background_color=[127, 127, 127], image_mean=[0.5] * 3, image_std=[0.5] * 3, min_size=14,
        resample=3, size={"height": 384, "width": 384})


# --------------------------------------------------------------------------------------------
# The reference run

def run_reference(model_dir, dtype_name, question, n_images, image_path, decode_tokens, repeats, threads,
                  device="cpu"):
    import torch
    from PIL import Image
    from tokenizers import Tokenizer
    from transformers.generation.streamers import BaseStreamer

    torch.set_num_threads(threads)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    orig = json.loads((model_dir / "config.json").read_text())
    cfg_dict, hybrid = hf_config(orig)
    if hybrid:
        from transformers import DeepseekVLHybridConfig as Config
        from transformers import DeepseekVLHybridForConditionalGeneration as Model
    else:
        from transformers import DeepseekVLConfig as Config
        from transformers import DeepseekVLForConditionalGeneration as Model

    t = time.perf_counter()
    sd = hf_state_dict(model_dir, hybrid, dtype)
    model = Model.from_pretrained(None, config=Config(**cfg_dict), state_dict=sd, dtype=dtype)
    del sd
    model.eval().to(device)
    cuda = device.startswith("cuda")

    def sync():  # GPU work is asynchronous: time it once it has finished
        if cuda:
            torch.cuda.synchronize()

    sync()
    load_ms = (time.perf_counter() - t) * 1e3
    proc = image_processor(hybrid)
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))

    class Stamps(BaseStreamer):
        def __init__(self):
            self.times, self.prompt_seen = [], False

        def put(self, value):
            if not self.prompt_seen:  # generate() pushes the prompt first
                self.prompt_seen = True
                return
            sync()
            self.times.append(time.perf_counter())

        def end(self):
            pass

    def one(n_new):
        t0 = time.perf_counter()
        # Same rendering as dsvl (v1 §8.1): system, "User: <image_placeholder>…question", "Assistant:".
        prompt = f"{SYSTEM}\n\nUser: {'<image_placeholder>' * n_images}{question}\n\nAssistant:"
        ids = [BOS_ID]
        for i in tok.encode(prompt, add_special_tokens=False).ids:
            ids.extend([IMAGE_ID] * TOKENS_PER_IMAGE if i == IMAGE_ID else [i])
        images = [Image.open(image_path).convert("RGB") for _ in range(n_images)]
        inputs = dict(proc(images, return_tensors="pt"))
        inputs = {k: v.to(device=device, dtype=dtype) for k, v in inputs.items()}
        input_ids = torch.tensor([ids], device=device)
        sync()
        t1 = time.perf_counter()
        with torch.inference_mode():
            if hybrid:
                model.model.get_image_features(inputs["pixel_values"], inputs["high_res_pixel_values"])
            else:
                model.model.get_image_features(inputs["pixel_values"])
        sync()
        vision_ms = (time.perf_counter() - t1) * 1e3
        s = Stamps()
        t2 = time.perf_counter()
        with torch.inference_mode():
            model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **inputs,
                           max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, streamer=s,
                           pad_token_id=100001, eos_token_id=None)
        ttft_ms = (t1 - t0) * 1e3 + (s.times[0] - t2) * 1e3
        decode = (len(s.times) - 1) / (s.times[-1] - s.times[0]) if len(s.times) > 1 else float("nan")
        return {"preprocess_ms": (t1 - t0) * 1e3, "vision_ms": vision_ms, "ttft_ms": ttft_ms,
                "decode_tokens_per_s": decode, "prompt_tokens": len(ids), "generated": len(s.times)}

    log(f"reference {dtype_name}: warm-up")
    one(2)
    runs = []
    for r in range(repeats):
        log(f"reference {dtype_name}: run {r + 1}/{repeats}")
        runs.append(one(decode_tokens))
    med = lambda k: statistics.median(x[k] for x in runs)  # noqa: E731
    return {
        "load_ms": load_ms, "preprocess_ms": med("preprocess_ms"), "vision_ms": med("vision_ms"),
        "ttft_ms": med("ttft_ms"), "decode_tokens_per_s": med("decode_tokens_per_s"),
        "prompt_tokens": runs[0]["prompt_tokens"], "generated": runs[0]["generated"],
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "runs": runs,
    }


def run_dsvl(binary, model_dir, dtype_name, a, out_json, quant=None):
    cmd = [str(binary), "bench", "--model", str(model_dir), "--dtype", dtype_name, "--images", str(a.images),
           "--image", str(a.image), "--prompt-tokens", str(a.prompt_tokens), "--decode-tokens", str(a.decode_tokens),
           "--repeats", str(a.repeats), "--threads", str(a.threads), "--device", a.device, "--json", str(out_json)]
    if quant:
        cmd += ["--quant", quant]
    if a.bandwidth_gb_s:
        cmd += ["--bandwidth-gb-s", str(a.bandwidth_gb_s)]
    log("+ " + " ".join(cmd))
    subprocess.run(cmd, check=True)
    return json.loads(Path(out_json).read_text())


def fmt(x, prec=1):
    return "n/a" if x is None or x != x else f"{x:.{prec}f}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="original-layout model folder (deepseek-ai/* layout)")
    p.add_argument("--dsvl", type=Path, default=REPO / "target/release/dsvl", help="dsvl binary (default: %(default)s)")
    p.add_argument("--dtypes", default="f32,bf16", help="comma-separated compute dtypes (default: %(default)s)")
    p.add_argument("--image", type=Path, default=REPO / "examples/chart.png", help="image (default: %(default)s)")
    p.add_argument("--images", type=int, default=1, help="images in the prompt (default: %(default)s)")
    p.add_argument("--prompt-tokens", type=int, default=40, help="approximate question length (default: %(default)s)")
    p.add_argument("--decode-tokens", type=int, default=32, help="new tokens per run (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="measured runs, medians reported (default: %(default)s)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads on both sides (default: all cores)")
    p.add_argument("--quants", default="",
                   help="also run dsvl with these --quant formats (f32 activations), e.g. q8_0,q4_k; "
                        "compared with every reference row")
    p.add_argument("--device", default="cpu",
                   help="cpu, or cuda[:N] on a GPU machine with a CUDA build of dsvl (scripts/build-cuda.sh) and torch "
                        "with CUDA; both sides run there (default: %(default)s)")
    p.add_argument("--bandwidth-gb-s", type=float,
                   help="memory bandwidth for dsvl's decode roofline instead of the host's measured one; "
                        "needed on a GPU (e.g. 4800 for an H200, 3350 for an H100 SXM)")
    p.add_argument("--skip-reference", action="store_true", help="only run dsvl (checks the script's plumbing)")
    p.add_argument("--json", type=Path, help="write all rows as JSON to this file")
    a = p.parse_args()

    if not (a.model / "config.json").is_file():
        sys.exit(
            f"{a.model}: no config.json; make one with `cargo xtask make-checkpoint --shape 1.3b "
            "--from crates/dsvl/tests/fixtures/v1/models/siglip-tiny --out DIR`"
        )
    if not a.dsvl.is_file():
        sys.exit(f"{a.dsvl}: no dsvl binary; build it with `cargo build --release -p dsvl-cli`")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dt in a.dtypes.split(","):
            d = run_dsvl(a.dsvl, a.model, dt, a, Path(tmp) / f"dsvl-{dt}.json")
            row = {"dtype": dt, "dsvl": d}
            if not a.skip_reference:
                ref = run_reference(a.model, dt, d["workload"]["question"], a.images, a.image,
                                    a.decode_tokens, a.repeats, a.threads, a.device)
                if ref["prompt_tokens"] != d["workload"]["prompt_tokens"]:
                    log(f"warning: prompt lengths differ: reference {ref['prompt_tokens']}, "
                        f"dsvl {d['workload']['prompt_tokens']}")
                row["reference"] = ref
            rows.append(row)
        quant_rows = []
        for q in filter(None, a.quants.split(",")):
            d = run_dsvl(a.dsvl, a.model, "f32", a, Path(tmp) / f"dsvl-{q}.json", quant=q)
            quant_rows.append({"quant": q, "dsvl": d})

    import platform
    versions = {"python": platform.python_version()}
    if not a.skip_reference:
        import torch
        import transformers
        versions.update(torch=torch.__version__, transformers=transformers.__version__)
    print(f"\nworkload: {a.images} image(s) {a.image.name}, {rows[0]['dsvl']['workload']['prompt_tokens']} prompt tokens, "
          f"{a.decode_tokens} new tokens, median of {a.repeats}, {a.threads} threads; {versions}")
    print(f"{'implementation':<22} {'load s':>8} {'vision ms':>10} {'TTFT ms':>10} {'decode tok/s':>13} {'peak RSS GiB':>13}")
    for row in rows:
        d = row["dsvl"]
        print(f"{'dsvl ' + row['dtype']:<22} {fmt(d['load_ms'] / 1e3):>8} {fmt(d['vision_ms']):>10} "
              f"{fmt(d['ttft_ms']):>10} {fmt(d['decode_tokens_per_s'], 2):>13} "
              f"{fmt((d['peak_rss_bytes'] or 0) / 2**30, 2):>13}")
        r = row.get("reference")
        if r:
            print(f"{'transformers ' + row['dtype']:<22} {fmt(r['load_ms'] / 1e3):>8} {fmt(r['vision_ms']):>10} "
                  f"{fmt(r['ttft_ms']):>10} {fmt(r['decode_tokens_per_s'], 2):>13} "
                  f"{fmt(r['peak_rss_bytes'] / 2**30, 2):>13}")
            # Speed-ups: above 1 means dsvl is faster.
            print(f"{'  speed-up of dsvl':<22} {fmt(r['load_ms'] / d['load_ms'], 2) + 'x':>8} "
                  f"{fmt(r['vision_ms'] / d['vision_ms'], 2) + 'x':>10} "
                  f"{fmt(r['ttft_ms'] / d['ttft_ms'], 2) + 'x':>10} "
                  f"{fmt(d['decode_tokens_per_s'] / r['decode_tokens_per_s'], 2) + 'x':>13}")
    for qrow in quant_rows:
        d = qrow["dsvl"]
        print(f"{'dsvl f32 + ' + qrow['quant']:<22} {fmt(d['load_ms'] / 1e3):>8} {fmt(d['vision_ms']):>10} "
              f"{fmt(d['ttft_ms']):>10} {fmt(d['decode_tokens_per_s'], 2):>13} "
              f"{fmt((d['peak_rss_bytes'] or 0) / 2**30, 2):>13}")
        for row in rows:
            r = row.get("reference")
            if r:
                print(f"{'  vs transformers ' + row['dtype']:<22} {fmt(r['load_ms'] / d['load_ms'], 2) + 'x':>8} "
                      f"{fmt(r['vision_ms'] / d['vision_ms'], 2) + 'x':>10} "
                      f"{fmt(r['ttft_ms'] / d['ttft_ms'], 2) + 'x':>10} "
                      f"{fmt(d['decode_tokens_per_s'] / r['decode_tokens_per_s'], 2) + 'x':>13}")
        print(f"{'  roofline':<22} {fmt(d['decode_roofline_tokens_per_s'], 2)} tok/s, "
              f"{fmt(d['decode_roofline_pct'])} % reached")
    if a.device != "cpu":
        gib = lambda b: "n/a" if b is None else f"{b / 2**30:.2f}"  # noqa: E731
        for row in rows:
            g = row["dsvl"].get("gpu_memory") or {}
            line = (f"GPU memory {row['dtype']}: dsvl peak allocated {gib(g.get('peak_allocated_bytes'))} GiB, "
                    f"device in use after the runs {gib(g.get('used_after_runs_bytes'))} GiB")
            if row.get("reference"):
                line += f"; transformers torch.cuda.max_memory_allocated {gib(row['reference']['peak_gpu_bytes'])} GiB"
            print(line)
    bw = rows[0]["dsvl"].get("memory_bandwidth_gb_s")
    if bw:
        print(f"memory bandwidth {bw:.1f} GB/s; dsvl decode roofline "
              + ", ".join(f"{row['dtype']} {fmt(row['dsvl']['decode_roofline_tokens_per_s'], 2)} tok/s "
                          f"({fmt(row['dsvl']['decode_roofline_pct'])} %)" for row in rows))
    if a.json:
        a.json.write_text(json.dumps({"versions": versions, "args": {k: str(v) for k, v in vars(a).items()},
                                      "rows": rows, "quant_rows": quant_rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
