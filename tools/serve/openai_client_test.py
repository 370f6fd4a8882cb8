#!/usr/bin/env python3
"""`blip2 serve` driven by the official `openai` Python package (no torch needed).

Starts the server on a free loopback port, sends a plain caption request, a streamed VQA
request and a two-turn chat, and checks that the texts equal what `blip2 caption`,
`blip2 ask` and `blip2 chat` print for the same images. Exits non-zero on any mismatch.

    python3 -m venv /tmp/oa && /tmp/oa/bin/pip install openai
    /tmp/oa/bin/python tools/serve/openai_client_test.py [--bin target/debug/blip2]
"""

import argparse
import base64
import pathlib
import subprocess
import sys

from openai import OpenAI

ROOT = pathlib.Path(__file__).resolve().parents[2]


def data_url(path):
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def cli(bin_, *args, stdin=None):
    out = subprocess.run(
        [bin_, *args, "--device", "cpu", "--quiet"],
        input=stdin, capture_output=True, text=True, check=True,
    )
    return out.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(ROOT / "target/debug/blip2"))
    a = ap.parse_args()
    server = subprocess.Popen(
        [a.bin, "serve", "--port", "0", "--device", "cpu", "--api-key", "test-key", "--quiet"],
        stdout=subprocess.PIPE, text=True,
    )
    failures = 0

    def check(what, got, want):
        nonlocal failures
        ok = got == want
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {what}: {got!r}" + ("" if ok else f" != {want!r}"))

    try:
        base = server.stdout.readline().strip().removeprefix("listening on ")
        client = OpenAI(base_url=base + "/v1", api_key="test-key", max_retries=20)
        models = client.models.list()
        check("model id", models.data[0].id, "blip2-demo")

        for name in ["three_shapes.png", "blue_triangle.png"]:
            img = ROOT / "examples" / name
            url = data_url(img)
            # Plain request: a caption (image, no text).
            r = client.chat.completions.create(
                model="blip2-demo",
                messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}],
            )
            check(f"caption {name}", r.choices[0].message.content, cli(a.bin, "caption", str(img)).strip())
            assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

            # Streamed VQA.
            q = "what color is the background?"
            stream = client.chat.completions.create(
                model="blip2-demo",
                stream=True,
                messages=[{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": q},
                ]}],
            )
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            check(f"streamed answer {name}", text, cli(a.bin, "ask", str(img), q).strip())

        # Two turns: the client sends the image and the first answer back.
        img = ROOT / "examples" / "three_shapes.png"
        q1, q2 = "what shape is red?", "what color is the circle?"
        want = cli(a.bin, "chat", str(img), stdin=f"{q1}\n{q2}\n").splitlines()
        msgs = [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(img)}},
            {"type": "text", "text": q1},
        ]}]
        r1 = client.chat.completions.create(model="blip2-demo", messages=msgs)
        a1 = r1.choices[0].message.content
        check("turn 1", a1, want[0])
        msgs += [{"role": "assistant", "content": a1}, {"role": "user", "content": q2}]
        r2 = client.chat.completions.create(model="blip2-demo", messages=msgs)
        check("turn 2", r2.choices[0].message.content, want[1])

        # A remote URL is refused with a 400 the client raises as BadRequestError.
        try:
            client.chat.completions.create(
                model="blip2-demo",
                messages=[{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}],
            )
            check("remote URL refused", "accepted", "BadRequestError")
        except Exception as e:  # noqa: BLE001
            check("remote URL refused", type(e).__name__, "BadRequestError")
    finally:
        server.terminate()
        code = server.wait(timeout=60)
        check("exit status after SIGTERM", code, 0)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
