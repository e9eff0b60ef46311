"""The HF transformers peers, measured the way shared/bench/peers_hf.py measures them.

- static batching (request-level, the Orca paper's baseline): batches of `bs` requests in
  trace order, left-padded, each batch generating its longest output length;
- continuous batching: transformers' `init_continuous_batching` manager, every request
  added at t=0 (compile level 0, HF's default: levels 2-3 autotune for minutes);
- batch-1 decode: prompt 128, 128 new tokens, one warm-up then one timed `generate`.

The model is built from the same config.json that Orca loads, with random weights.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from bench.common import progress, sync
from bench.trace import TraceRequest


def make_model(model_dir: str | Path, device: str, dtype: str) -> tuple[Any, int]:
    """A random-weight HF model of the shape in `model_dir`/config.json; (model, params)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(model_dir)
    # EOS is ignored everywhere in the trace; ids 0/1 are the pad/bos of the peer runs.
    cfg.eos_token_id = None
    cfg.pad_token_id = 0
    cfg.bos_token_id = 1
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype))
    model.eval()
    return model, sum(p.numel() for p in model.parameters())


def static_batching(
    model: Any, requests: list[TraceRequest], bs: int, device: str
) -> dict[str, Any]:
    """Request-level batching: each batch runs until its longest request is done."""
    import torch
    from transformers import GenerationConfig

    t0 = time.perf_counter()
    useful = computed = 0
    with torch.no_grad():
        for i in range(0, len(requests), bs):
            chunk = requests[i : i + bs]
            width = max(len(p) for p, _ in chunk)
            new_tokens = max(o for _, o in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for j, (prompt, _) in enumerate(chunk):
                ids[j, width - len(prompt) :] = torch.tensor(prompt)
                mask[j, width - len(prompt) :] = 1
            gc = GenerationConfig(
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
            model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gc
            )
            sync(device)
            useful += sum(o for _, o in chunk)
            computed += new_tokens * len(chunk)
            progress(f"hf_static: {min(i + bs, len(requests))}/{len(requests)} requests")
    seconds = time.perf_counter() - t0
    return {
        "bs": bs,
        "seconds": seconds,
        "req_s": len(requests) / seconds,
        "out_tok_s": useful / seconds,
        "waste": 1 - useful / computed,
    }


def continuous_batching(
    model: Any, requests: list[TraceRequest], device: str, timeout_s: float
) -> dict[str, Any]:
    """All requests at t=0 through HF's continuous-batching manager (compile level 0)."""
    import torch
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    gc = GenerationConfig(do_sample=False, eos_token_id=-1, pad_token_id=0, max_new_tokens=128)
    # HF sizes its own KV cache from free GPU memory; on CPU it needs explicit sizes.
    kw = {} if device.startswith("cuda") else {"num_blocks": 64, "max_batch_tokens": 256}
    cbc = ContinuousBatchingConfig(**kw)
    warmup_error = None
    with torch.no_grad():
        mgr = model.init_continuous_batching(generation_config=gc, continuous_batching_config=cbc)
        tw = time.perf_counter()
        try:
            mgr.warmup()
        except Exception as exc:  # older/newer transformers: warm-up is optional
            warmup_error = repr(exc)[:300]
        warmup_s = time.perf_counter() - tw
        mgr.start()
        t0 = time.perf_counter()
        ids = [mgr.add_request(p, max_new_tokens=o, eos_token_id=-1) for p, o in requests]
        done: dict[str, Any] = {}
        useful = 0
        while len(done) < len(ids) and time.perf_counter() - t0 < timeout_s:
            r = mgr.get_result(timeout=1)
            if r is not None and r.is_finished():
                done[r.request_id] = r
                if r.error is None:
                    useful += len(r.generated_tokens)
                if len(done) % 64 == 0:
                    progress(f"hf_cb: {len(done)}/{len(ids)} finished")
        seconds = time.perf_counter() - t0
        mgr.stop(block=True, timeout=10)
    errors = sum(1 for r in done.values() if r.error is not None)
    return {
        "seconds": seconds,
        "warmup_s": warmup_s,
        "warmup_error": warmup_error,
        "finished": len(done),
        "errors": errors,
        "timed_out": len(done) < len(ids),
        "req_s": len(done) / seconds,
        "out_tok_s": useful / seconds,
    }


def batch1_decode(
    model: Any, device: str, vocab_size: int, prompt_len: int = 128, new_tokens: int = 128
) -> dict[str, Any]:
    """One request, `prompt_len` random ids, `new_tokens` tokens: generate time per token."""
    import torch
    from transformers import GenerationConfig

    rng = random.Random(7)
    ids = torch.tensor([[rng.randrange(10, vocab_size) for _ in range(prompt_len)]], device=device)
    gc = GenerationConfig(
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    with torch.no_grad():
        model.generate(input_ids=ids, generation_config=gc)
        sync(device)
        t = time.perf_counter()
        model.generate(input_ids=ids, generation_config=gc)
        sync(device)
        seconds = time.perf_counter() - t
    return {
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "ms_per_token": seconds / new_tokens * 1e3,
    }
