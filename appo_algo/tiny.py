"""The ``tiny`` preset: a small Llama-style LM with a tokenizer trained on the env suite's own text.

``build_tiny`` (what ``appo warmstart`` runs) collects scripted-agent demonstrations,
trains a byte-level BPE tokenizer on them, builds the model from a config and
warm-starts it by supervised training on the demonstrations' assistant turns. The result
is cached under ``$APPO_CACHE_DIR`` (default ``~/.cache/appo-lab``) in a folder named by
a hash of everything that changes it (``TinySpec``, library versions, ``TINY_FORMAT``),
so later runs load it in seconds.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import gymnasium as gym
import numpy as np
import tokenizers
import torch
import transformers

import appo_envs  # noqa: F401  (registers the env ids)
from appo_algo.policy import Policy
from appo_envs.agents import run_episode, scripted_agent_for

TINY_FORMAT = 1  # bump when the build procedure changes: it is part of the cache key
SPECIAL_TOKENS = ["<pad>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>",
                  "<tool_call>", "</tool_call>", "<answer>", "</answer>", "<tool_response>", "</tool_response>"]


@dataclass(frozen=True)
class TinySpec:
    """Everything that determines the tiny model (and so its cache key)."""

    env_id: str = "appo/CodeExec-v0"
    env_kwargs: Mapping[str, Any] = field(default_factory=lambda: {"difficulty": "easy"})
    demo_profile: str = "flaky"
    demo_episodes: int = 1000
    demo_seed: int = 1_000_000  # demonstrations use seeds demo_seed.. (training prompts start at 0)
    vocab_size: int = 2048
    hidden: int = 128
    layers: int = 3
    heads: int = 4
    intermediate: int = 384
    max_positions: int = 2048
    sft_steps: int = 600
    sft_batch: int = 16
    sft_lr: float = 3e-3
    seed: int = 0

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> "TinySpec":
        """Defaults overridden by ``options`` (the config's ``model_options``); unknown keys are rejected."""
        options = dict(options or {})
        known = {f.name for f in fields(cls)}
        unknown = set(options) - known
        if unknown:
            raise ValueError(f"unknown tiny model option(s) {sorted(unknown)}; allowed: {sorted(known)}")
        if "env_kwargs" in options:
            options["env_kwargs"] = dict(options["env_kwargs"])
        return cls(**options)

    def cache_key(self) -> str:
        payload = {**asdict(self), "env_kwargs": dict(self.env_kwargs), "format": TINY_FORMAT,
                   "torch": torch.__version__.split("+")[0], "transformers": transformers.__version__,
                   "tokenizers": tokenizers.__version__, "envs": env_source_digest()}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# A smaller, faster-to-build variant (model_options) for tests, CI and quick trials: one task
# family (Collatz step sums: copy two numbers, run, copy the result), so a 2-layer model learns it.
SMOKE_ENV_KWARGS: dict[str, Any] = {"difficulty": "easy", "family": "collatz_steps"}
SMOKE_OPTIONS: dict[str, Any] = {"env_kwargs": SMOKE_ENV_KWARGS, "demo_episodes": 150, "sft_steps": 300,
                                 "hidden": 64, "layers": 2, "heads": 2, "intermediate": 128}


def env_source_digest() -> str:
    """Hash of the env suite's source: tasks, prompts, tools and scripted agents shape the demonstrations."""
    root = Path(appo_envs.__file__).parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def cache_root() -> Path:
    """``$APPO_CACHE_DIR`` or ``~/.cache/appo-lab``."""
    return Path(os.environ.get("APPO_CACHE_DIR") or Path.home() / ".cache" / "appo-lab")


@dataclass
class Demonstration:
    """One scripted episode: the prompt messages and its (action, observation) turns."""

    messages: list[dict[str, str]]
    turns: list[tuple[str, str]]
    success: bool


def collect_demonstrations(spec: TinySpec) -> list[Demonstration]:
    """Scripted-agent episodes under the demo fault profile (faults teach retries)."""
    env = gym.make(spec.env_id, faults=spec.demo_profile, **dict(spec.env_kwargs))
    agent = scripted_agent_for(spec.env_id)
    demos = []
    try:
        for i in range(spec.demo_episodes):
            seed = spec.demo_seed + i
            _, info = env.reset(seed=seed)
            summary = run_episode(env, agent, seed=seed)
            demos.append(Demonstration(info["messages"], summary.steps, summary.success))
    finally:
        env.close()
    return demos


def train_tokenizer(demos: list[Demonstration], vocab_size: int) -> transformers.PreTrainedTokenizerFast:
    """Byte-level BPE over the plain-format transcripts; format markers and tool tags are single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from appo_algo.policy import PlainFormat

    fmt = PlainFormat(None)
    texts = []
    for d in demos:
        parts = [fmt.prompt_text(d.messages)]
        for action, obs in d.turns:
            parts += [action, fmt.tool_response_text(obs)]
        texts.append("".join(parts))
    tok = Tokenizer(models.BPE())
    # Digits stay single tokens (numbers are copied digit by digit); everything else may merge
    # across spaces, so the suite's fixed text (schemas, solver code) costs few tokens.
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), max_token_length=64)
    tok.train_from_iterator(texts, trainer=trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|end|>",
                                                additional_special_tokens=SPECIAL_TOKENS[2:])


def build_model(spec: TinySpec, vocab_size: int) -> transformers.PreTrainedModel:
    """A Llama-architecture causal LM from a config, initialised from ``spec.seed``."""
    config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=spec.hidden, num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads, num_key_value_heads=spec.heads, intermediate_size=spec.intermediate,
        max_position_embeddings=spec.max_positions, tie_word_embeddings=True, pad_token_id=0,
        bos_token_id=None, eos_token_id=1)
    torch.manual_seed(spec.seed)
    return transformers.LlamaForCausalLM(config)


def demonstration_tensors(policy: Policy, demos: list[Demonstration]) -> list[tuple[list[int], list[int]]]:
    """(ids, loss mask) per demonstration, assembled exactly as the rollout engine assembles rollouts."""
    rows = []
    for d in demos:
        ids = policy.prompt_ids(d.messages)
        mask = [0] * len(ids)
        for k, (action, obs) in enumerate(d.turns):
            turn = policy.encode(action)
            ids += turn
            mask += [1] * len(turn)
            if k + 1 < len(d.turns):  # the last turn ends the episode: nothing is appended after it
                resp = policy.tool_response_ids(obs, turn)
                ids += resp
                mask += [0] * len(resp)
        rows.append((ids, mask))
    return rows


def supervised_warmstart(policy: Policy, rows: list[tuple[list[int], list[int]]], spec: TinySpec,
                         log: Callable[[str], None] = print) -> list[float]:
    """Next-token cross-entropy on assistant-turn tokens; AdamW with warm-up and cosine decay."""
    model = policy.model
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=spec.sft_lr, weight_decay=0.01, betas=(0.9, 0.98))
    warm = max(1, spec.sft_steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / spec.sft_steps))))
    rng = random.Random(spec.seed)
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(spec.sft_steps):
        batch = rng.sample(rows, min(spec.sft_batch, len(rows)))
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), policy.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.bool)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        for r, (i, m) in enumerate(batch):
            ids[r, :len(i)] = torch.tensor(i)
            mask[r, :len(m)] = torch.tensor(m, dtype=torch.bool)
            attn[r, :len(i)] = 1
        ids, mask, attn = ids.to(policy.device), mask.to(policy.device), attn.to(policy.device)
        logp = policy.token_logprobs(ids, attn, temperature=1.0)
        target = mask[:, 1:]
        loss = -(logp * target).sum() / target.sum().clamp_min(1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == spec.sft_steps - 1:
            log(f"warmstart step {step + 1}/{spec.sft_steps}  loss {losses[-1]:.4f}  "
                f"({time.perf_counter() - t0:.0f} s)")
    model.eval()
    return losses


def build_tiny(spec: TinySpec, device: str | None = None, log: Callable[[str], None] = print) -> Path:
    """Build (or find) the cached tiny model for ``spec``; return its folder."""
    folder = cache_root() / f"tiny-{spec.cache_key()}"
    if (folder / "appo_tiny.json").exists():
        return folder
    t0 = time.perf_counter()
    demos = collect_demonstrations(spec)
    log(f"warmstart: {len(demos)} scripted demonstrations on {spec.env_id} "
        f"({spec.demo_profile}), success {np.mean([d.success for d in demos]):.1%}")
    tokenizer = train_tokenizer(demos, spec.vocab_size)
    policy = Policy(build_model(spec, len(tokenizer)), tokenizer, device=device)
    rows = demonstration_tensors(policy, demos)
    lengths = [len(r[0]) for r in rows]
    log(f"warmstart: tokenizer vocab {len(tokenizer)}, episode tokens median {int(np.median(lengths))} "
        f"max {max(lengths)}, model params {sum(p.numel() for p in policy.model.parameters()):,}")
    losses = supervised_warmstart(policy, rows, spec, log)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    policy.model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    meta = {"spec": {**asdict(spec), "env_kwargs": dict(spec.env_kwargs)}, "final_loss": losses[-1],
            "seconds": time.perf_counter() - t0, "format": TINY_FORMAT}
    (tmp / "appo_tiny.json").write_text(json.dumps(meta, indent=1))
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process finished the same build first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"warmstart: done in {meta['seconds']:.0f} s, final loss {losses[-1]:.4f}, cached at {folder}")
    return folder
