"""The `orca` command line: `orca demo-model DIR`, `orca serve --model DIR`,
`orca generate --model DIR PROMPT...`, `orca tune --model DIR --latency-budget-ms-per-token X`."""

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
        "--scheduler-config",
        default=None,
        metavar="FILE",
        help="JSON with max_num_seqs / max_num_batched_tokens (as orca tune --write makes); "
        "overrides those flags",
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
        "--overlap",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="overlapped scheduling: the scheduler sends the next plan while the current one "
        "runs (default: on with --tp 1 --pp 1, which it needs)",
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

    tune = sub.add_parser(
        "tune",
        help="choose max_num_seqs / max_num_batched_tokens for a latency budget",
        description="Serve the paper's synthesized workload (prompts of 32-512 tokens, outputs "
        "of 1-128, Poisson arrivals) in-process at each rate under each candidate setting, "
        "and report the setting that sustains the highest rate whose median normalized "
        "latency (latency / output tokens) stays within the budget.",
    )
    tune.add_argument("--model", required=True, help="HF-format checkpoint folder")
    tune.add_argument(
        "--latency-budget-ms-per-token",
        type=float,
        required=True,
        help="the bound on the median normalized latency (ms per output token)",
    )
    tune.add_argument(
        "--rates", default="1,2,4,8,16,32", help="Poisson rates to try, req/s (default 1,...,32)"
    )
    tune.add_argument(
        "--max-num-seqs",
        default="16,32,64,128,256",
        help="candidate batch sizes (default 16,32,64,128,256)",
    )
    tune.add_argument(
        "--max-num-batched-tokens",
        default="8192",
        help="candidate token budgets per iteration (default 8192)",
    )
    tune.add_argument("--n-per-rate", type=int, default=96, help="requests per rate (default 96)")
    tune.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    tune.add_argument(
        "--dtype", default="auto", help="auto, float32, float16 or bfloat16 (default auto)"
    )
    tune.add_argument(
        "--load-format",
        choices=["safetensors", "random"],
        default="safetensors",
        help="random: random weights from config.json alone",
    )
    tune.add_argument("--seed", type=int, default=0, help="workload seed (default 0)")
    tune.add_argument(
        "--write",
        default=None,
        metavar="FILE",
        help="write the chosen setting as JSON, for orca serve --scheduler-config FILE",
    )
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
    if args.command == "tune":
        return _tune(args)
    return 2


def _serve(args: argparse.Namespace) -> int:
    from orca.launcher import ServeConfig, serve

    names = [
        "model", "host", "port", "grpc_port", "device", "dtype", "redis_url", "max_num_seqs",
        "max_num_batched_tokens", "kv_policy", "api_key", "served_model_name", "block_size",
        "num_kv_blocks", "load_format", "kernels", "cuda_graph_max_batch", "overlap",
        "log_dir", "tp", "pp", "pipelines",
    ]  # fmt: skip
    if args.overlap and (args.tp, args.pp) != (1, 1):
        print("orca serve: --overlap needs --tp 1 --pp 1", file=sys.stderr)
        return 2
    values = {name: getattr(args, name) for name in names}
    if args.scheduler_config:
        from orca.tune import read_scheduler_config

        try:
            values.update(read_scheduler_config(args.scheduler_config))
        except ValueError as exc:
            print(f"orca serve: {exc}", file=sys.stderr)
            return 2
    return serve(ServeConfig(**values))


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise SystemExit(f"orca tune: {flag} takes positive integers, got {text!r}")
    return values


def _tune(args: argparse.Namespace) -> int:
    from orca import LLM
    from orca.tune import candidate_settings, format_table, tune, write_scheduler_config
    from orca.workload import trace

    try:
        rates = [float(x) for x in args.rates.split(",") if x.strip()]
    except ValueError:
        rates = []
    if not rates or min(rates) <= 0:
        print(f"orca tune: --rates takes positive numbers, got {args.rates!r}", file=sys.stderr)
        return 2
    settings = candidate_settings(
        _int_list(args.max_num_seqs, "--max-num-seqs"),
        _int_list(args.max_num_batched_tokens, "--max-num-batched-tokens"),
    )
    llm = LLM(model=args.model, device=args.device, dtype=args.dtype, load_format=args.load_format)
    requests = trace(args.n_per_rate, llm.worker_info.vocab_size, seed=args.seed)
    budget = args.latency_budget_ms_per_token

    def report(result) -> None:
        print(f"{result.setting}: best rate within budget {result.best_rate}", flush=True)

    results, best = tune(llm, requests, settings, rates, budget, on_result=report)
    print("\n" + format_table(results, budget) + "\n")
    if best is None:
        print(f"no setting kept the median under {budget:g} ms/token at any rate tried")
        return 1
    print(f"chosen: {best.setting} ({best.best_rate:g} req/s within {budget:g} ms/token)")
    if args.write:
        write_scheduler_config(args.write, best.setting)
        print(f"wrote {args.write}")
    return 0


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
