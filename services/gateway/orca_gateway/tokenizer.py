"""The served model's tokenizer: prompts and chat messages to ids, ids to text.

The gateway is the only process that knows the tokenizer. Loaded with transformers'
AutoTokenizer, which works without torch. Calls run on the event loop: Hugging Face fast
tokenizers are not safe to share between threads.
"""

from __future__ import annotations

import json
from pathlib import Path

from orca_gateway.errors import InvalidParameter

# Byte-level BPE tokens spell bytes with printable stand-ins (GPT-2's table); this maps
# each stand-in back to its byte, so logprobs can report a token's raw bytes.


def _byte_level_table() -> dict[str, int]:
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


_BYTE_LEVEL = _byte_level_table()


class Tokenizer:
    """Encoding, chat templates and decoding for one model folder."""

    def __init__(self, hf_tokenizer, model_config: dict | None = None) -> None:
        self._tok = hf_tokenizer
        config = model_config or {}
        self.vocab_size = max(len(hf_tokenizer), int(config.get("vocab_size") or 0))
        # Fallback context length when no scheduler has published one.
        self.max_position_embeddings = int(config.get("max_position_embeddings") or 0)
        self._byte_level = _uses_byte_level_decoder(hf_tokenizer)
        self._token_text: dict[int, str] = {}

    @classmethod
    def load(cls, model_dir: str | Path) -> Tokenizer:
        """Load the tokenizer (and config.json, when present) of a model folder."""
        from transformers import AutoTokenizer

        hf_tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        config_path = Path(model_dir) / "config.json"
        config = json.loads(config_path.read_text()) if config_path.exists() else {}
        return cls(hf_tokenizer, config)

    @property
    def has_chat_template(self) -> bool:
        """Whether the tokenizer config carries a chat template."""
        return bool(getattr(self._tok, "chat_template", None))

    def encode(self, text: str) -> list[int]:
        """A completion prompt's ids, with the model's special tokens (e.g. BOS) added."""
        return list(self._tok.encode(text, add_special_tokens=True))

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """A conversation's ids through the model's chat template, ready for the reply."""
        if not self.has_chat_template:
            raise InvalidParameter(
                "This model's tokenizer has no chat template; use /v1/completions.",
                param="messages",
            )
        try:
            text = self._tok.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        except Exception as exc:  # jinja raises TemplateError, templates raise their own
            raise InvalidParameter(
                f"The chat template rejected the messages: {exc}", param="messages"
            ) from exc
        # The template already wrote BOS and every special token.
        return list(self._tok.encode(text, add_special_tokens=False))

    def decode(self, token_ids: list[int]) -> str:
        """Text of ids, special tokens left out."""
        return self._tok.decode(
            token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def token_text(self, token_id: int) -> str:
        """One token's own text (as logprobs report it); partial characters show as U+FFFD."""
        text = self._token_text.get(token_id)
        if text is None:
            text = self._tok.decode([token_id], clean_up_tokenization_spaces=False)
            self._token_text[token_id] = text
        return text

    def token_bytes(self, token_id: int) -> bytes:
        """One token's raw UTF-8 bytes (exact for byte-level BPE, else its text encoded)."""
        if self._byte_level:
            piece = self._tok.convert_ids_to_tokens(token_id)
            if piece is not None and all(c in _BYTE_LEVEL for c in piece):
                return bytes(_BYTE_LEVEL[c] for c in piece)
        return self.token_text(token_id).encode("utf-8")


def _uses_byte_level_decoder(hf_tokenizer) -> bool:
    try:
        from tokenizers import decoders

        return isinstance(hf_tokenizer.backend_tokenizer.decoder, decoders.ByteLevel)
    except Exception:  # a slow tokenizer, or no backend: fall back to text
        return False
