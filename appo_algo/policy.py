"""``Policy``: any transformers causal LM + tokenizer, with the turn format and device choice the learner needs.

Two turn formats (registry ``TURN_FORMATS``):

- ``chat_template`` — used when the tokenizer has a chat template. Tool responses are sent
  with role ``tool`` (or ``user`` when the template rejects ``tool``; ``Policy.describe()``
  says which).
- ``plain`` — for tokenizers without one (the ``tiny`` preset)::

      <|system|>\\n{system}<|end|>\\n<|user|>\\n{user}<|end|>\\n<|assistant|>\\n{turn}<|end|>\\n
      <|tool|>\\n{observation}<|end|>\\n<|assistant|>\\n{next turn}...

Token-in/token-out: the learner keeps the sampled ids of every assistant turn as they are
and appends ``tool_response_ids(observation)`` (the end of the assistant turn, the tool
message and the header of the next assistant turn), tokenized once.
"""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F

from appo_algo.scoring import entropy_of

_SENTINEL = "\u241eAPPO_TURN_SENTINEL\u241e"
# Tokens that end an assistant turn in common chat formats (besides the tokenizer's EOS).
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


class PlainFormat:
    """The documented plain turn format (see the module docstring)."""

    name = "plain"

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.tool_role = "tool"

    def prompt_text(self, messages: Sequence[Mapping[str, str]]) -> str:
        return "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in messages) + "<|assistant|>\n"

    def tool_response_text(self, observation: str) -> str:
        return f"<|end|>\n<|tool|>\n{observation}<|end|>\n<|assistant|>\n"


class ChatTemplateFormat:
    """The tokenizer's own chat template; the text between turns is read off the rendered template."""

    name = "chat_template"

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.tool_role = "tool"
        try:
            self.tool_response_text("probe")
        except Exception:  # templates that only know system/user/assistant raise on role "tool"
            self.tool_role = "user"
            self.tool_response_text("probe")

    def prompt_text(self, messages: Sequence[Mapping[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)

    def tool_response_text(self, observation: str) -> str:
        msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                {"role": "assistant", "content": _SENTINEL}, {"role": self.tool_role, "content": observation}]
        text = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        return text[text.index(_SENTINEL) + len(_SENTINEL):]


TURN_FORMATS: dict[str, Callable[[Any], PlainFormat | ChatTemplateFormat]] = {
    "plain": PlainFormat,
    "chat_template": ChatTemplateFormat,
}


@dataclass(frozen=True)
class DeviceChoice:
    """Where and how the model runs: device, autocast dtype (None = full precision)."""

    device: torch.device
    autocast_dtype: torch.dtype | None

    @classmethod
    def auto(cls, device: str | None = None) -> "DeviceChoice":
        """CUDA with bf16 autocast when present (or asked), else CPU in fp32."""
        dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but torch.cuda.is_available() is False; use device: cpu")
        bf16 = dev.type == "cuda" and torch.cuda.is_bf16_supported()
        return cls(dev, torch.bfloat16 if bf16 else None)


def set_cpu_threads(n: int | None) -> None:
    """Intra-op CPU threads for torch; small models run fastest (and reproducibly) on one thread."""
    if n is not None:
        if n < 1:
            raise ValueError(f"cpu_threads must be >= 1, got {n}")
        torch.set_num_threads(n)


class Policy:
    """A causal LM and its tokenizer, on a chosen device, speaking one turn format."""

    def __init__(self, model: Any, tokenizer: Any, device: str | None = None, turn_format: str | None = None):
        self.choice = DeviceChoice.auto(device)
        self.model = model.to(self.choice.device)
        self.tokenizer = tokenizer
        fmt_name = turn_format or ("chat_template" if getattr(tokenizer, "chat_template", None) else "plain")
        if fmt_name not in TURN_FORMATS:
            raise ValueError(f"unknown turn format {fmt_name!r}; known: {sorted(TURN_FORMATS)}")
        self.format = TURN_FORMATS[fmt_name](tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_id is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token first")
        vocab = tokenizer.get_vocab()
        ends = {tokenizer.eos_token_id} | {vocab[t] for t in _END_OF_TURN_TOKENS if t in vocab}
        self.end_of_turn_ids: frozenset[int] = frozenset(i for i in ends if i is not None)
        self._end_texts = {i: tokenizer.decode([i]) for i in self.end_of_turn_ids}
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        # transformers 5 renamed ``past_key_values`` to ``cache``; accept either generation of the API.
        self._cache_kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    @property
    def device(self) -> torch.device:
        return self.choice.device

    def describe(self) -> dict[str, Any]:
        """What runs where (logged at the start of a run)."""
        return {"device": str(self.device), "autocast": str(self.choice.autocast_dtype), "format": self.format.name,
                "tool_role": self.format.tool_role, "vocab": self.vocab_size,
                "params": sum(p.numel() for p in self.model.parameters()),
                "attn": getattr(self.model.config, "_attn_implementation", None)}

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA, nothing on CPU."""
        if self.choice.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.choice.autocast_dtype)

    # --- text <-> ids -------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no BOS/EOS added (the formats write their own markers)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` with every marker kept (tool-call tags may be special tokens)."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def prompt_ids(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """The prompt up to and including the header of the first assistant turn."""
        return self.encode(self.format.prompt_text(messages))

    def tool_response_ids(self, observation: str, turn_ids: Sequence[int]) -> list[int]:
        """Ids appended after an assistant turn: its end marker (unless sampled), the tool message, the next header."""
        text = self.format.tool_response_text(observation)
        if turn_ids and turn_ids[-1] in self.end_of_turn_ids:
            end = self._end_texts[turn_ids[-1]]
            if text.startswith(end):
                text = text[len(end):]
        return self.encode(text)

    # --- forward passes -------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                cache: Any = None, logits_to_keep: int | torch.Tensor = 0, model: Any = None) -> torch.Tensor:
        """One call of the policy's model, or of ``model`` (a frozen reference copy), with autocast applied;
        appends to ``cache`` in place; returns the logits."""
        kwargs = {self._cache_kwarg: cache} if cache is not None else {}
        with self.autocast():
            out = (model or self.model)(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=cache is not None, logits_to_keep=logits_to_keep, **kwargs)
        return out.logits

    def token_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float,
                       chunk: int = 4, model: Any = None) -> torch.Tensor:
        """log π(ids[t] | ids[<t]) at temperature τ for t >= 1, shape [B, T-1] (differentiable); π is the
        policy's model or ``model``."""
        mask = attention_mask.long()
        position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
        logits = self.forward(input_ids, mask, position_ids, model=model)[:, :-1]
        targets = input_ids[:, 1:]
        rows = [log_softmax_gather(logits[i:i + chunk], targets[i:i + chunk], temperature)
                for i in range(0, logits.shape[0], chunk)]
        return torch.cat(rows, 0)


def log_softmax_gather(logits: torch.Tensor, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits/τ)[ids] in fp32, without keeping a full fp32 log-softmax around."""
    z = logits.float() / temperature
    return z.gather(-1, ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, -1)


def sampling_stats(logits: torch.Tensor, temperature: float, generator: torch.Generator | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample one id per row from softmax(logits/τ); return (ids, log-probs, full-vocabulary entropies)."""
    logp = F.log_softmax(logits.float() / temperature, -1)
    ids = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
    return ids, logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1), entropy_of(logp)


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Run with dropout off and no autograd, restoring the train/eval flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
