#!/usr/bin/env python3
"""dsvl serve against the official `openai` Python package (issue #3: compatibility test).

Run by the ignored Rust test `openai_compat` (tests/server/openai_compat.rs), which installs
`openai` into a throwaway virtualenv under the target directory and starts the server on a free
loopback port. By hand, against any running `dsvl serve`:

    pip install openai
    python3 crates/dsvl-server/tests/openai_compat.py --base-url http://127.0.0.1:8080/v1 \
        --image crates/dsvl/tests/fixtures/v1/images/landscape_500x333.png

Checks, with greedy decoding (temperature 0):
1. `models.list()` lists the served model and it is retrievable by id;
2. a chat completion with an image (data URL) parses into the SDK's types, with usage;
3. the same request streamed with `stream_options.include_usage`: deltas add up to the same text,
   exactly one `finish_reason`, a final usage-only chunk (`choices == []`) with the same counts;
4. `logprobs` + `top_logprobs`: one entry per completion token, `top_logprobs` long, greedy picks
   the top alternative, the tokens add up to the text;
5. an invalid request raises `openai.BadRequestError` carrying the server's `param`.
Prints one line per check and exits non-zero on the first failure.
"""

import argparse
import base64
import json
import mimetypes
import sys

try:
    import openai
    from openai import OpenAI
except ImportError:
    print("SKIPPED: the `openai` package is not installed (pip install openai)")
    sys.exit(0)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8080/v1")
    ap.add_argument("--image", required=True, help="an image file, sent as a data URL")
    ap.add_argument("--prompt", default="Describe this image in detail.")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--api-key", default="unused")
    ap.add_argument("--expect-text", help="the exact greedy answer, when known")
    ap.add_argument("--expect-prompt-tokens", type=int)
    ap.add_argument("--extra-body", default="{}", help="JSON object of request extensions")
    args = ap.parse_args()

    client = OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=600)
    extra = json.loads(args.extra_body)
    print(f"openai {openai.__version__} against {args.base_url}")

    # 1. models
    models = client.models.list().data
    check(len(models) == 1, f"one served model, got {models}")
    model = models[0].id
    check(client.models.retrieve(model).id == model, "models.retrieve by id")
    print(f"ok models: {model}")

    mime = mimetypes.guess_type(args.image)[0] or "image/png"
    with open(args.image, "rb") as f:
        url = f"data:{mime};base64,{base64.b64encode(f.read()).decode()}"
    messages = [{
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": url, "detail": "auto"}},
            {"type": "text", "text": args.prompt},
        ],
    }]
    common = dict(model=model, messages=messages, temperature=0, max_tokens=args.max_tokens,
                  extra_body=extra)

    # 2. chat with an image
    r = client.chat.completions.create(**common)
    choice = r.choices[0]
    text = choice.message.content
    check(r.object == "chat.completion", r.object)
    check(choice.message.role == "assistant", choice.message.role)
    check(isinstance(text, str) and text, f"non-empty content, got {text!r}")
    check(choice.finish_reason in ("stop", "length"), choice.finish_reason)
    u = r.usage
    check(u.total_tokens == u.prompt_tokens + u.completion_tokens, f"usage adds up: {u}")
    check(0 < u.completion_tokens <= args.max_tokens, f"completion tokens: {u}")
    if args.expect_text is not None:
        check(text == args.expect_text, f"text {text!r} != expected {args.expect_text!r}")
    if args.expect_prompt_tokens is not None:
        check(u.prompt_tokens == args.expect_prompt_tokens,
              f"prompt tokens {u.prompt_tokens} != {args.expect_prompt_tokens}")
    print(f"ok chat: {u.prompt_tokens} prompt + {u.completion_tokens} completion tokens, "
          f"finish_reason={choice.finish_reason}, text={text!r}")

    # 3. streaming with include_usage
    stream = client.chat.completions.create(
        **common, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    check(chunks, "at least one chunk")
    check(len({c.id for c in chunks}) == 1, "one id for the whole stream")
    check(chunks[0].choices[0].delta.role == "assistant", "first delta has the role")
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks
                if c.choices and c.choices[0].finish_reason]
    last = chunks[-1]
    check(streamed == text, f"streamed {streamed!r} != non-streamed {text!r}")
    check(finishes == [choice.finish_reason], f"finish reasons {finishes}")
    check(last.choices == [] and last.usage is not None, f"usage chunk last: {last}")
    check((last.usage.prompt_tokens, last.usage.completion_tokens)
          == (u.prompt_tokens, u.completion_tokens), f"stream usage {last.usage} vs {u}")
    check(all(c.usage is None for c in chunks[:-1]), "usage only on the last chunk")
    print(f"ok stream: {len(chunks)} chunks, usage {last.usage.prompt_tokens}"
          f"+{last.usage.completion_tokens}")

    # 4. logprobs
    r = client.chat.completions.create(**common, logprobs=True, top_logprobs=3)
    lp = r.choices[0].logprobs.content
    check(len(lp) == r.usage.completion_tokens, f"{len(lp)} logprob entries")
    for t in lp:
        check(t.logprob <= 0.0, f"logprob {t.logprob}")
        check(len(t.top_logprobs) == 3, f"top_logprobs {t.top_logprobs}")
        check(t.top_logprobs[0].token == t.token, f"greedy picks the top: {t}")
        check(t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob, "sorted")
        check(t.bytes == list(t.token.encode()), "bytes are the token's UTF-8")
    joined = "".join(t.token for t in lp)
    check(joined == r.choices[0].message.content or text.startswith(joined),
          f"tokens {joined!r} vs text {text!r}")
    print(f"ok logprobs: {[(t.token, round(t.logprob, 3)) for t in lp[:3]]} ...")

    # 5. errors
    try:
        client.chat.completions.create(**{**common, "n": 2})
        raise AssertionError("n = 2 accepted")
    except openai.BadRequestError as e:
        check(e.status_code == 400 and e.param == "n", f"{e.status_code} {e.param} {e}")
        print(f"ok error: 400 param={e.param} code={e.code}: {e.message}")

    print("ALL OK")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}")
        sys.exit(1)
