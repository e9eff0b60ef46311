"""Decode attention on the GPU: `paged_decode_attention` (split-K) against
`paged_prefill_attention` with one query per sequence (what steps with a prefill chunk use
for their decode rows), at Llama-3-8B's head shapes. Prints a table; JSON lines to --out.

    python3 bench/attention_bench.py --out bench/results/attention.jsonl

Each case is checked against the torch reference before it is timed (triton.testing.do_bench).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def run_case(
    batch: int, ctx: int, heads: int, kv_heads: int, head_dim: int, block: int, width: int
):
    """Microseconds of each kernel for `batch` sequences of `ctx` cached tokens, the block
    tables `width` blocks wide (at least the context's; a decode graph's are as wide as the
    model's longest sequence, and the decode kernel sizes its split count from the width)."""
    import torch
    from triton.testing import do_bench

    from orca_kernels.paged_attention import (
        paged_decode_attention,
        paged_decode_attention_ref,
        paged_prefill_attention,
    )

    dev, dtype = "cuda", torch.bfloat16
    blocks_per_seq = -(-ctx // block)
    num_blocks = batch * blocks_per_seq + 1
    k_cache = torch.randn(num_blocks, block, kv_heads, head_dim, device=dev, dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    tables = torch.randperm(num_blocks - 1, device=dev)[: batch * blocks_per_seq]
    tables = tables.view(batch, blocks_per_seq).to(torch.int32)
    if width > blocks_per_seq:  # padded as a graph's static table is
        pad = torch.zeros(batch, width - blocks_per_seq, device=dev, dtype=torch.int32)
        tables = torch.cat([tables, pad], dim=1)
    lens = torch.full((batch,), ctx, device=dev, dtype=torch.int32)
    q = torch.randn(batch, heads, head_dim, device=dev, dtype=dtype)
    query_start = torch.arange(batch + 1, device=dev, dtype=torch.int32)
    scale = head_dim**-0.5
    want = paged_decode_attention_ref(q, k_cache, v_cache, tables, lens, scale)
    decode = paged_decode_attention(q, k_cache, v_cache, tables, lens, scale)
    prefill = paged_prefill_attention(q, k_cache, v_cache, tables, query_start, lens, scale, 1)
    for name, got in (("decode", decode), ("prefill", prefill)):
        torch.testing.assert_close(got.float(), want.float(), atol=3e-2, rtol=3e-2, msg=name)
    return {
        "batch": batch,
        "ctx": ctx,
        "decode_us": 1e3
        * do_bench(lambda: paged_decode_attention(q, k_cache, v_cache, tables, lens, scale)),
        "prefill_q1_us": 1e3
        * do_bench(
            lambda: paged_prefill_attention(
                q, k_cache, v_cache, tables, query_start, lens, scale, 1
            )
        ),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the grid of cases and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", default="1,8,32,128,256")
    ap.add_argument("--contexts", default="128,512,2048,8192")
    ap.add_argument(
        "--table-blocks",
        type=int,
        default=512,
        help="block-table width (default 512: a decode graph's for 8192 tokens of 16)",
    )
    ap.add_argument("--out", default=None, help="append JSON lines here")
    args = ap.parse_args(argv)
    rows = []
    for batch in (int(x) for x in args.batches.split(",")):
        for ctx in (int(x) for x in args.contexts.split(",")):
            row = run_case(
                batch, ctx, heads=32, kv_heads=8, head_dim=128, block=16, width=args.table_blocks
            )
            rows.append(row)
            line = json.dumps({"stage": "decode_attention", **row})
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(line + "\n")
    print("\n| batch | context | decode kernel, µs | prefill kernel (q_len 1), µs |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['ctx']} | {r['decode_us']:.1f} | {r['prefill_q1_us']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
