#!/usr/bin/env python
"""batching: what dynamic batching buys a worker on the real Gemma 3 270M (issue 11).

N raters are waiting on one worker process, each for a reply to a different message. The script samples their
N replies with the worker's own backend (`workers.backends.TransformersBackend`, the code the worker runs, with
its streaming callbacks) two ways, in the same run, on the same loaded model:

* one at a time (what a worker without batching does: rater i waits for the i-1 replies before theirs);
* in one batch (`generate_batch`, what `annotate.generation._riders_claim` gives a worker: every waiting reply
  of the same model and parameters in one left-padded `generate`).

and prints, for N = 1, 4, 8: the worker's tokens per second, the mean wait for the first token and the ratio
batched / one at a time, and whether greedy decoding gave each rater the same text both ways (it must).
Like the worker, torch uses TORCH_NUM_THREADS threads (1). No database: the model is the part measured.

    .venv/bin/python bench/batching.py                  # N = 1, 4, 8; 48 tokens each (~3 min on 2 CPUs)
    .venv/bin/python bench/batching.py --sizes 1,8 --tokens 32
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from common import ROOT  # noqa: F401 - puts the repository on the path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DEBUG", "1")  # settings only: no server, no database

MESSAGES = [
    "Can you help me plan a birthday party?",
    "What should I cook tonight?",
    "I need a name for my new puppy.",
    "How do I fix a flat bicycle tyre?",
    "Write a short poem about the sea.",
    "Which city should I visit in spring?",
    "Explain what a mortgage is.",
    "Give me three ideas for a rainy afternoon.",
]


def run(backend: Any, requests: list[Any], *, batched: bool) -> dict[str, Any]:
    """Sample the requests; per request the seconds to its first token, and the texts and tokens."""
    started = time.monotonic()
    first: dict[int, float] = {}

    def writer(index: int) -> Any:
        def on_text(text: str) -> bool:
            first.setdefault(index, time.monotonic() - started)
            return True

        return on_text

    writers = [writer(i) for i in range(len(requests))]
    if batched:
        results = backend.generate_batch(requests, writers)
    else:
        results = [backend.generate(request, on_text) for request, on_text in zip(requests, writers, strict=True)]
    seconds = time.monotonic() - started
    tokens = sum(r.completion_tokens or 0 for r in results)
    return {
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "first_token_s": statistics.mean(first.get(i, seconds) for i in range(len(requests))),
        "texts": [r.text for r in results],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,4,8", help="raters waiting at once (comma separated)")
    parser.add_argument("--tokens", type=int, default=48, help="tokens per reply (min = max: no early end)")
    args = parser.parse_args()

    import django

    django.setup()
    import torch
    from django.conf import settings

    from workers.backends import GenerationRequest, TransformersBackend, load_transformers

    torch.set_num_threads(settings.TORCH_NUM_THREADS)
    backend = TransformersBackend("gemma3-270m", prompt_format="plain")
    loading = time.monotonic()
    load_transformers("gemma3-270m")
    print(f"Gemma 3 270M loaded in {time.monotonic() - loading:.1f} s; torch threads {torch.get_num_threads()}")
    params = {"temperature": 0, "max_new_tokens": args.tokens, "min_new_tokens": args.tokens}
    warm = [GenerationRequest(messages=[{"role": "user", "content": "Hello"}], params=params)]
    backend.generate_batch(warm * 2, [lambda t: True] * 2)  # first-call costs out of the figures

    rows = []
    for size in [int(n) for n in args.sizes.split(",")]:
        requests = [
            GenerationRequest(messages=[{"role": "user", "content": MESSAGES[i % len(MESSAGES)]}], params=params)
            for i in range(size)
        ]
        alone = run(backend, requests, batched=False)
        together = run(backend, requests, batched=True)
        same = alone["texts"] == together["texts"]
        rows.append((size, alone, together, same))
        print(
            f"N={size}: one at a time {alone['tokens_per_s']:.1f} tok/s, first token {alone['first_token_s']:.2f} s;"
            f" batched {together['tokens_per_s']:.1f} tok/s, first token {together['first_token_s']:.2f} s;"
            f" same greedy text: {same}"
        )

    print("\n| raters waiting | one at a time tok/s | batched tok/s | ratio | first token: one at a time | batched |"
          " same greedy text |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for size, alone, together, same in rows:
        ratio = together["tokens_per_s"] / alone["tokens_per_s"]
        print(
            f"| {size} | {alone['tokens_per_s']:.1f} | {together['tokens_per_s']:.1f} | {ratio:.2f}× |"
            f" {alone['first_token_s']:.2f} s | {together['first_token_s']:.2f} s | {'yes' if same else 'NO'} |"
        )
    if not all(same for *_, same in rows):
        raise SystemExit("Greedy decoding gave different text batched and one at a time")


if __name__ == "__main__":
    main()
