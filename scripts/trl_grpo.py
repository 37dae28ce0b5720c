"""TRL's GRPOTrainer, an outside client, training a tiny model against a suite env through ``environment_factory``.

Everything is built offline: a byte-level BPE tokenizer trained on the env's own prompts
(with the Qwen2.5 chat template TRL ships, so TRL knows how to parse tool calls) and a
small Qwen2 model from a config. It proves the plumbing (tool methods, reset, reward,
faults), not learning. A randomly initialised model never writes a well-formed call, so
``--warmstart-steps`` first teaches it one fixed call (``python`` printing a constant, then
``submit_answer``) by supervised steps on the env's own prompts; GRPO then runs TRL's real
tool loop against the env, faults included.

    python scripts/trl_grpo.py --env appo/CodeExec-v0 --faults flaky --steps 3
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # environment_factory is marked experimental in TRL

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import gymnasium as gym
import torch
import transformers
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from trl import GRPOConfig, GRPOTrainer
from trl.chat_template_utils import qwen2_5_chat_template

import appo_envs  # noqa: F401  (registers the env ids)
from appo_algo.trl_adapter import INSTRUCTION, TRLToolEnv, environment_factory, seed_dataset

# The Qwen2.5 template's markers; each must be one token for TRL's tool-call parsing and masks.
CHAT_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>",
               "<tools>", "</tools>", "<tool_response>", "</tool_response>"]


def env_corpus(env_id: str, env_kwargs: dict[str, Any], n: int) -> list[str]:
    """Prompts and tool schemas of ``n`` episodes: the text the tokenizer must encode compactly."""
    env = gym.make(env_id, **env_kwargs)
    try:
        texts = []
        for seed in range(n):
            prompt, info = env.reset(seed=seed)
            texts += [prompt, str(info["tools"]), INSTRUCTION]
        return texts
    finally:
        env.close()


def build_tokenizer(texts: list[str], vocab_size: int) -> transformers.PreTrainedTokenizerFast:
    """Byte-level BPE (lossless on any Unicode) with the chat markers as single tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=CHAT_TOKENS[:3], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    # Tool markers are ordinary (non-special) added tokens, as in Qwen: decoding keeps them so calls parse.
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in CHAT_TOKENS[3:]])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                                pad_token="<|endoftext|>", padding_side="left")
    fast.chat_template = qwen2_5_chat_template
    return fast


def build_model(vocab_size: int, tokenizer: transformers.PreTrainedTokenizerFast, seed: int) -> transformers.PreTrainedModel:
    """A two-layer Qwen2 causal LM from a config (a few hundred thousand parameters)."""
    config = transformers.Qwen2Config(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=4096, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    return transformers.Qwen2ForCausalLM(config)


WARMSTART_CALLS = [("python", {"code": "print(6*7)"}), ("submit_answer", {"answer": "42"})]


def warmstart(model: transformers.PreTrainedModel, tokenizer: transformers.PreTrainedTokenizerFast,
              env_class: type, seeds: list[int], steps: int, lr: float = 3e-3) -> list[float]:
    """Supervised steps on (prompt rendered as TRL renders it, a fixed tool-call turn): format only, no solving."""
    env = env_class()
    missing = [name for name, _ in WARMSTART_CALLS if not hasattr(env, name)]
    if missing:
        env._close()
        raise ValueError(f"the warm start calls {missing}, which {env_class.env_id} lacks; pass --warmstart-steps 0")
    tools = [getattr(env, name) for name, _ in WARMSTART_CALLS]
    rows = []
    try:
        for seed in seeds:
            messages = [{"role": "user", "content": env.reset(seed=seed)}]
            for name, arguments in WARMSTART_CALLS:
                prompt = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True,
                                                       tokenize=True, return_dict=False)
                call = {"type": "function", "function": {"name": name, "arguments": arguments}}
                full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": "", "tool_calls": [call]}],
                                                     tools=tools, tokenize=True, return_dict=False)
                rows.append((full, len(prompt)))
                messages += [{"role": "assistant", "content": "", "tool_calls": [call]},
                             {"role": "tool", "name": name, "content": "[ok] 42"}]
    finally:
        env._close()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    model.train()
    for step in range(steps):
        ids, start = rows[step % len(rows)]
        x = torch.tensor([ids])
        labels = x.clone()
        labels[:, :start] = -100  # loss on the assistant turn only
        loss = model(input_ids=x, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="appo/CodeExec-v0")
    parser.add_argument("--faults", default="flaky")
    parser.add_argument("--env-kwargs", default='{"difficulty": "easy"}', help="JSON kwargs for gym.make")
    parser.add_argument("--steps", type=int, default=3, help="GRPO optimizer steps")
    parser.add_argument("--num-generations", type=int, default=2, help="rollouts per task (the GRPO group)")
    parser.add_argument("--batch-size", type=int, default=4, help="rollouts per step (a multiple of the group size)")
    parser.add_argument("--max-completion-length", type=int, default=48, help="tokens per rollout, tool output included")
    parser.add_argument("--max-tool-calls", type=int, default=2, help="TRL's max_tool_calling_iterations")
    parser.add_argument("--warmstart-steps", type=int, default=150, help="supervised steps teaching the call format")
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write global_step, seconds and the per-step logs to this file")
    parser.add_argument("--output-dir", default=None, help="TRL output folder (default: a temporary one)")
    args = parser.parse_args(argv)

    env_kwargs: dict[str, Any] = {"faults": args.faults, **json.loads(args.env_kwargs)}
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    tokenizer = build_tokenizer(env_corpus(args.env, env_kwargs, 64), args.vocab_size)
    model = build_model(len(tokenizer), tokenizer, args.seed)
    env_class = environment_factory(args.env, **env_kwargs)
    made: list[TRLToolEnv] = []  # every instance TRL asks for, so their sandboxes and services are released at the end

    def factory() -> TRLToolEnv:
        made.append(env_class())
        return made[-1]

    n_tasks = args.steps * args.batch_size // args.num_generations
    if args.warmstart_steps:
        losses = warmstart(model, tokenizer, env_class, list(range(10_000, 10_008)), args.warmstart_steps)
        print(f"warm start: loss {losses[0]:.3f} -> {losses[-1]:.3f} in {len(losses)} steps")
    with tempfile.TemporaryDirectory() as tmp:
        config = GRPOConfig(
            output_dir=args.output_dir or tmp, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
            num_generations=args.num_generations, max_completion_length=args.max_completion_length,
            max_tool_calling_iterations=args.max_tool_calls, learning_rate=1e-4, logging_steps=1,
            save_strategy="no", report_to=[], use_cpu=True, bf16=False, seed=args.seed, temperature=1.0,
            dataloader_num_workers=0)
        trainer = GRPOTrainer(model=model, processing_class=tokenizer, args=config,
                              train_dataset=seed_dataset(n_tasks), environment_factory=factory)
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
    history = [h for h in trainer.state.log_history if "loss" in h]
    for env in made:
        env._close()
    print(f"steps: {trainer.state.global_step}  seconds: {seconds:.1f}")
    for h in history:
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in h.items()
               if k in ("step", "loss", "reward", "reward_std", "tools/call_frequency", "tools/failure_frequency",
                        "completions/mean_length")})
    result = {"global_step": trainer.state.global_step, "history": history, "seconds": seconds}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
