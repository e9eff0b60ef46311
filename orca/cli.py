"""The `orca` command line: `orca demo-model DIR`, `orca generate --model DIR PROMPT...`."""

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
    return 2


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
