#!/usr/bin/env python3
"""Structured output through the official `openai` Python package: the Pydantic flow.

Run by the ignored Rust test `openai_structured` (tests/server/openai_compat.rs), or by hand
against any running `dsvl serve`:

    pip install openai
    python3 crates/dsvl-server/tests/openai_structured.py --base-url http://127.0.0.1:8080/v1 \
        --image crates/dsvl/tests/fixtures/v1/images/landscape_500x333.png

Checks, with a random-weight test model (whose free text is noise):
1. `client.beta.chat.completions.parse(response_format=Receipt)` (a Pydantic model with a nested
   model, a list, an enum-like Literal and numbers) returns `message.parsed` as a `Receipt`;
2. the same with `client.chat.completions.parse` where the SDK has it;
3. `response_format={"type": "json_object"}` gives a JSON object;
4. `extra_body={"guided_choice": [...]}` (vLLM's extension) gives one of the choices;
5. an unsupported schema keyword raises `openai.BadRequestError` naming it.
Prints one line per check and exits non-zero on the first failure.
"""

import argparse
import base64
import json
import sys
from typing import List, Literal

try:
    import openai
    from openai import OpenAI
    from pydantic import BaseModel, Field
except ImportError:
    print("SKIPPED: the `openai` package is not installed (pip install openai)")
    sys.exit(0)


class Item(BaseModel):
    name: str = Field(max_length=16)
    price: float = Field(ge=0, le=1000, multiple_of=0.01)


class Receipt(BaseModel):
    merchant: str = Field(max_length=24)
    currency: Literal["EUR", "USD", "GBP"]
    items: List[Item] = Field(min_length=1, max_length=3)
    total: float = Field(ge=0, le=10000, multiple_of=0.01)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--image", required=True)
    args = ap.parse_args()
    client = OpenAI(base_url=args.base_url, api_key="unused")
    with open(args.image, "rb") as f:
        url = "data:image/png;base64," + base64.b64encode(f.read()).decode()
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "text", "text": "Read this receipt."},
    ]}]

    parse_fns = [("beta.chat.completions.parse", client.beta.chat.completions.parse)]
    if hasattr(client.chat.completions, "parse"):
        parse_fns.append(("chat.completions.parse", client.chat.completions.parse))
    for name, parse in parse_fns:
        for seed in (0, 1):
            done = parse(model="dsvl-fixture", messages=messages, response_format=Receipt,
                         temperature=0 if seed == 0 else 1, seed=seed, max_tokens=300)
            msg = done.choices[0].message
            assert done.choices[0].finish_reason == "stop", done
            assert isinstance(msg.parsed, Receipt), msg
            print(f"ok {name} seed {seed}: {msg.content}")

    done = client.chat.completions.create(model="dsvl-fixture", messages=messages, max_tokens=300,
                                          temperature=0, response_format={"type": "json_object"})
    text = done.choices[0].message.content
    if done.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict), text
    else:
        assert text.startswith("{"), text
    print(f"ok json_object ({done.choices[0].finish_reason}): {text[:80]}")

    done = client.chat.completions.create(model="dsvl-fixture", messages=messages, max_tokens=20,
                                          temperature=0, extra_body={"guided_choice": ["invoice", "receipt"]})
    assert done.choices[0].message.content in ("invoice", "receipt"), done
    print(f"ok guided_choice: {done.choices[0].message.content}")

    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "array", "items": {"type": "string"}, "uniqueItems": True}}}
    try:
        client.chat.completions.create(model="dsvl-fixture", messages=messages, response_format=bad)
        raise AssertionError("an unsupported keyword was accepted")
    except openai.BadRequestError as e:
        assert "uniqueItems" in str(e), e
        print(f"ok unsupported keyword: {e.body.get('message') if isinstance(e.body, dict) else e}")
    print("ALL OK")


if __name__ == "__main__":
    main()
