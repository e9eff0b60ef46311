"""The `orca` command line: `orca demo-model DIR`, `orca serve --model DIR`, `orca generate --model DIR PROMPT...`."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every `orca` subcommand (its --help texts are the docs)."""
    parser = argparse.ArgumentParser(
        prog="orca", description="Orca: serve transformer language models."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo-model", help="write a small random-weight Llama checkpoint with a tokenizer"
    )
    demo.add_argument("dir", help="folder to write the checkpoint into (created)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the weights (default 0)")

    serve = sub.add_parser(
        "serve",
        help="start the whole stack locally: embedded Redis, worker, scheduler, gateway",
        description="Start Redis (unless --redis-url), a worker, the scheduler and the gateway as "
        "separate processes; print where they listen; Ctrl-C stops everything.",
    )
    serve.add_argument(
        "--model", required=True, help="HF-format checkpoint folder (with its tokenizer)"
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="listen address of the HTTP and gRPC APIs (default 127.0.0.1)",
    )
    serve.add_argument(
        "--port", type=int, default=8000, help="HTTP port of the OpenAI API (default 8000)"
    )
    serve.add_argument(
        "--grpc-port", type=int, default=8001, help="port of the gRPC Generate API (default 8001)"
    )
    serve.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    serve.add_argument(
        "--dtype", default="auto", help="auto, float32, float16 or bfloat16 (default auto)"
    )
    serve.add_argument("--redis-url", default=None, help="use this Redis instead of starting one")
    serve.add_argument(
        "--max-num-seqs", type=int, default=256, help="most sequences per iteration (default 256)"
    )
    serve.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=8192,
        help="most tokens per iteration (default 8192)",
    )
    serve.add_argument(
        "--kv-policy",
        choices=["paged", "reserve"],
        default="paged",
        help="KV policy (default paged)",
    )
    serve.add_argument(
        "--api-key",
        default=None,
        help="require this bearer token on the /v1 routes and on gRPC calls",
    )
    serve.add_argument(
        "--served-model-name", default=None, help="model name in the API (default: folder name)"
    )
    serve.add_argument(
        "--block-size", type=int, default=16, help="tokens per KV block (default 16)"
    )
    serve.add_argument(
        "--num-kv-blocks", type=int, default=None, help="KV pool size (default: sized from memory)"
    )
    serve.add_argument(
        "--load-format",
        choices=["safetensors", "random"],
        default="safetensors",
        help="random: random weights from config.json alone (benchmarks)",
    )
    serve.add_argument(
        "--kernels",
        choices=["auto", "torch", "triton"],
        default="auto",
        help="workers' kernels: triton (orca_kernels: paged attention, fused norms, rotary, "
        "activations), torch, or auto: triton on CUDA, torch on CPU (default auto)",
    )
    serve.add_argument(
        "--cuda-graph-max-batch",
        type=int,
        default=256,
        help="workers replay CUDA graphs for decode steps of up to this many sequences (CUDA, "
        "triton kernels, tp = pp = 1); 0: every step eager (default 256)",
    )
    serve.add_argument(
        "--tp", type=int, default=1, help="tensor-parallel ranks per pipeline stage (default 1)"
    )
    serve.add_argument("--pp", type=int, default=1, help="pipeline stages per pipeline (default 1)")
    serve.add_argument(
        "--pipelines",
        type=int,
        default=1,
        help="pipelines behind the scheduler (default 1); workers = pipelines*pp*tp",
    )
    serve.add_argument(
        "--log-dir", default=None, help="folder for the services' logs (default: a temp folder)"
    )

    gen = sub.add_parser("generate", help="complete prompts offline with orca.LLM")
    gen.add_argument("prompts", nargs="+", help="prompt texts, one completion each")
    gen.add_argument("--model", required=True, help="HF-format checkpoint folder")
    gen.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    gen.add_argument(
        "--dtype", default="auto", help="auto, float32, float16 or bfloat16 (default auto)"
    )
    gen.add_argument(
        "--max-tokens", type=int, default=32, help="tokens to generate per prompt (default 32)"
    )
    gen.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default 0)")
    gen.add_argument("--seed", type=int, default=None, help="per-request sampling seed")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one `orca` subcommand; returns the process exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "demo-model":
        from orca.demo_model import run_demo_model_command

        return run_demo_model_command(args)
    if args.command == "generate":
        return _generate(args)
    if args.command == "serve":
        return _serve(args)
    return 2


def _serve(args: argparse.Namespace) -> int:
    from orca.launcher import ServeConfig, serve

    names = [
        "model", "host", "port", "grpc_port", "device", "dtype", "redis_url", "max_num_seqs",
        "max_num_batched_tokens", "kv_policy", "api_key", "served_model_name", "block_size",
        "num_kv_blocks", "load_format", "kernels", "cuda_graph_max_batch", "log_dir", "tp",
        "pp", "pipelines",
    ]  # fmt: skip
    return serve(ServeConfig(**{name: getattr(args, name) for name in names}))


def _generate(args: argparse.Namespace) -> int:
    from orca import LLM, SamplingParams

    llm = LLM(model=args.model, device=args.device, dtype=args.dtype)
    params = SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed
    )
    for prompt, out in zip(args.prompts, llm.generate(args.prompts, params), strict=True):
        print(f"{prompt!r} -> {out.text!r} ({len(out.token_ids)} tokens, {out.finish_reason})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
