"""CPU cost of routing Bi-WKV through the ``medurwkv::bi_wkv`` custom op (issue 12: nothing gets slower on a CPU).

Usage::

    python benchmarks/bench_wkv_op_cpu.py [--threads 2] [--repeats 5]

In one process, alternating the two variants repeat by repeat so that machine load hits both alike, it times

* the operator alone, forward+backward (B = 2, C = 192, float32, T = 196 / 1024 / 4096): the chunked path's
  autograd Function called directly (``bi_wkv_chunked``, the CPU path before the custom op) vs the public entry
  point ``bi_wkv(impl="auto")``, which goes through the custom op;
* a full training step (forward, cross-entropy, backward, AdamW) of ``med_urwkv_t`` at 128², batch 2, with the
  model's Bi-WKV calls patched to each of the two.

It prints the minimum over repeats of each and the ratio op / direct (1.00 = no cost).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch


def _direct(w, u, k, v, *, token_split=32, eps=1e-6, impl="auto"):
    """The chunked autograd Function, called as the model called it before the custom op existed."""
    from medurwkv.ops.bi_wkv.chunked import bi_wkv_chunked

    dt = v.dtype
    f = torch.float64 if torch.float64 in {w.dtype, k.dtype} else torch.float32
    return bi_wkv_chunked(w.to(f), u.to(f), k.to(f), v.to(f), token_split, float(eps)).to(dt)


def _best(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    for fn in fns.values():  # warm-up
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from medurwkv import create_model
    from medurwkv.models import layers
    from medurwkv.ops import bi_wkv

    print(f"torch {torch.__version__}, {args.threads} thread(s), min of {args.repeats} repeats\n")
    print("| what | direct (s) | custom op (s) | op / direct |\n|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for T in (196, 1024, 4096):
        w, u = torch.rand(192, generator=g) / T, torch.rand(192, generator=g) / T
        k, v = torch.randn(2, T, 192, generator=g), torch.randn(2, T, 192, generator=g)
        ins = [x.clone().requires_grad_() for x in (w, u, k, v)]

        def step(fn, ins=ins):
            fn(*ins, token_split=32, eps=1e-6).sum().backward()

        r = _best({"direct": lambda s=step: s(_direct), "op": lambda s=step: s(bi_wkv)}, args.repeats)
        print(
            f"| Bi-WKV fwd+bwd, T = {T} | {r['direct']:.4f} | {r['op']:.4f} | {r['op'] / r['direct']:.2f} |"
        )

    torch.manual_seed(0)
    model = create_model("med_urwkv_t", in_channels=1, num_classes=2).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.randn(2, 1, 128, 128), torch.randint(0, 2, (2, 128, 128))

    def train_step(fn):
        layers.bi_wkv = fn  # SpatialMix.wkv calls the name imported into models.layers
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    try:
        r = _best({"direct": lambda: train_step(_direct), "op": lambda: train_step(bi_wkv)}, args.repeats)
    finally:
        layers.bi_wkv = bi_wkv
    print(
        f"| med_urwkv_t training step, 128², batch 2 | {r['direct']:.3f} | {r['op']:.3f} | "
        f"{r['op'] / r['direct']:.2f} |"
    )


if __name__ == "__main__":
    main()
