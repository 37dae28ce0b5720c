"""Rollout engine: batched multi-turn sampling with the KV cache, token-in/token-out, and KV-forked branches.

One engine call runs a batch of episodes turn by turn. Every row of the batch feeds its
pending tokens (prompt, or the previous turn's last token plus the tool response) as one
ragged chunk, then samples one token per step until its turn stops (``</tool_call>``,
``</answer>``, an end-of-turn token, or the per-turn budget). Finished turns are sent to
the envs (in a thread pool: tools run in subprocesses), each observation is tokenized
once and appended, and the loop continues until every episode ends.

Ragged rows share one KV cache: positions that a row did not fill are holes masked out
by the attention mask, and position ids count only a row's real tokens, so a row's
logits do not depend on the rest of the batch. A branch copies the KV rows of its
parent's prefix (no prefill), forks the env as it was at the start of the turn that
contains the branch point (a fork is taken before every ``env.step``), and then runs
the same loop.
"""
from __future__ import annotations

import re
import string
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import gymnasium as gym
import torch
from transformers import DynamicCache

from appo_algo.branching import Segment
from appo_algo.policy import Policy, eval_mode, sampling_stats
from appo_envs import fork_env

STOP_STRINGS = ("</tool_call>", "</answer>")
_SPANS = re.compile(r"<tool_call>.*?(?:</tool_call>|$)|<answer>.*?(?:</answer>|$)", re.DOTALL)
_STOP_TAIL_TOKENS = 16  # decoded tail that must contain a stop string completed by the newest token


@dataclass
class RolloutLimits:
    """Token budgets and engine switches."""

    temperature: float = 1.0
    max_turn_tokens: int = 256
    max_episode_tokens: int = 1024
    env_workers: int = 4
    keep_branch_state: bool = True  # keep KV rows and per-turn env forks so episodes can be branched


@dataclass
class KVRow:
    """The KV cache of one finished row: per layer (keys, values) [heads, T, dim] and the column mask [T]."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    valid: torch.Tensor


@dataclass
class Episode:
    """One rollout, token by token over the whole sequence (prompt included), and its outcome.

    Per token: ``ids``; ``logp`` and ``entropy`` of the sampling distribution (0 where not
    sampled); ``mask`` True on sampled tokens; ``turn`` (-1 in the prompt); ``segment`` (codes
    of ``Segment``; the prompt counts as context like a tool response).
    """

    group: int
    seed: int
    prompt_len: int
    ids: list[int]
    logp: list[float]
    entropy: list[float]
    mask: list[bool]
    turn: list[int]
    segment: list[int]
    turn_starts: list[int] = field(default_factory=list)
    turn_ends: list[int] = field(default_factory=list)
    reward: float = 0.0
    success: bool = False
    infra_failure: bool = False
    end_reason: str = ""
    tool_calls: int = 0
    tool_errors: int = 0
    faults: Counter = field(default_factory=Counter)
    parent: "Episode | None" = None
    branch_position: int | None = None
    cols: list[int] = field(default_factory=list)  # KV column of every fed token
    kv: KVRow | None = None
    snapshots: list[gym.Env] = field(default_factory=list)  # env at the start of each turn

    @property
    def root(self) -> "Episode":
        ep = self
        while ep.parent is not None:
            ep = ep.parent
        return ep

    @property
    def generated_tokens(self) -> int:
        """Tokens this episode sampled itself (a branch's shared prefix is not counted)."""
        start = self.branch_position or 0
        return sum(self.mask[start:])

    def tool_boundary(self) -> list[bool]:
        """True on the first sampled token of every turn after the first (right after a tool response)."""
        out = [False] * len(self.ids)
        for start, end in zip(self.turn_starts[1:], self.turn_ends[1:]):
            if end > start:
                out[start] = True
        return out


class KVBatch:
    """A batched KV cache whose rows may have holes; ``step`` feeds one ragged chunk and returns next-token logits."""

    def __init__(self, cache: DynamicCache, valid: torch.Tensor, n_real: torch.Tensor):
        self.cache, self.valid, self.n_real = cache, valid, n_real

    @classmethod
    def empty(cls, rows: int, device: torch.device) -> "KVBatch":
        return cls(DynamicCache(), torch.zeros(rows, 0, dtype=torch.bool, device=device),
                   torch.zeros(rows, dtype=torch.long, device=device))

    @classmethod
    def from_rows(cls, rows: Sequence[KVRow], widths: Sequence[int], n_real: Sequence[int],
                  device: torch.device) -> "KVBatch":
        """Stack prefixes ``row[:width]`` of finished rows (copies; the parents stay intact)."""
        w = max(widths)
        n_layers = len(rows[0].layers)
        data = []
        for layer in range(n_layers):
            k0, v0 = rows[0].layers[layer]
            keys = k0.new_zeros((len(rows), k0.shape[0], w, k0.shape[2]))
            values = v0.new_zeros((len(rows), v0.shape[0], w, v0.shape[2]))
            for r, (row, width) in enumerate(zip(rows, widths)):
                keys[r, :, :width] = row.layers[layer][0][:, :width]
                values[r, :, :width] = row.layers[layer][1][:, :width]
            data.append((keys, values))
        valid = torch.zeros(len(rows), w, dtype=torch.bool, device=device)
        for r, (row, width) in enumerate(zip(rows, widths)):
            valid[r, :width] = row.valid[:width]
        return cls(DynamicCache(ddp_cache_data=data), valid, torch.tensor(list(n_real), device=device))

    @property
    def width(self) -> int:
        return self.valid.shape[1]

    def step(self, policy: Policy, chunk: torch.Tensor, chunk_valid: torch.Tensor) -> torch.Tensor:
        """Append ``chunk`` [R, C] (invalid entries are holes) to the cache; logits [R, V] after each row's last valid token."""
        attn = torch.cat([self.valid, chunk_valid], 1)
        pos = (self.n_real[:, None] + chunk_valid.long().cumsum(1) - 1).clamp_min(0)
        c = chunk.shape[1]
        last = (c - 1) - chunk_valid.flip(1).long().argmax(1)  # rows with no valid entry get c-1 (ignored)
        keep, inverse = torch.unique(last, return_inverse=True)
        logits = policy.forward(chunk, attn.long(), pos, cache=self.cache, logits_to_keep=keep)
        self.valid, self.n_real = attn, self.n_real + chunk_valid.sum(1)
        return logits[torch.arange(chunk.shape[0], device=chunk.device), inverse]

    def select(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (in this order)."""
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[rows], layer.values[rows]
        self.valid, self.n_real = self.valid[rows], self.n_real[rows]

    def extract(self, r: int) -> KVRow:
        """Row ``r`` up to its last real column (trailing holes dropped)."""
        cols = torch.nonzero(self.valid[r]).flatten()
        width = int(cols[-1]) + 1 if len(cols) else 0
        # Copies, so a finished row does not keep the whole batch's cache tensors alive.
        return KVRow([(layer.keys[r, :, :width].clone(), layer.values[r, :, :width].clone())
                      for layer in self.cache.layers],
                     self.valid[r, :width].clone())


@dataclass
class _Row:
    """Live state of one episode inside an engine call."""

    ep: Episode
    env: gym.Env
    pending: list[int]
    turn_ids: list[int]
    turn_done: bool = False
    ended: bool = False


class TokenTables:
    """Per-vocabulary facts the engine needs every step, computed once per tokenizer."""

    def __init__(self, policy: Policy):
        pieces = [policy.decode([i]) for i in range(policy.vocab_size)]
        punct = set(string.punctuation)
        self.skip = torch.tensor([p.strip() == "" or all(ch in punct or ch.isspace() for ch in p) for p in pieces])
        # Only tokens containing '>' can complete a stop string; others skip the tail decode.
        self.may_stop = [">" in p for p in pieces]
        self.pieces = pieces


def segment_codes(pieces: Sequence[str]) -> list[int]:
    """Segment of each token of one turn: tool-call text, answer, or reasoning (by the token's last character)."""
    text = "".join(pieces)
    label = [int(Segment.REASONING)] * (len(text) + 1)
    for m in _SPANS.finditer(text):
        code = int(Segment.TOOL_CALL if m.group(0).startswith("<tool_call>") else Segment.ANSWER)
        label[m.start():m.end()] = [code] * (m.end() - m.start())
    out, pos = [], 0
    for p in pieces:
        pos += len(p)
        out.append(label[max(pos - 1, 0)] if p else label[pos])
    return out


class RolloutEngine:
    """Samples episodes and branches against Gymnasium text envs with one policy."""

    def __init__(self, policy: Policy, limits: RolloutLimits):
        self.policy, self.limits = policy, limits
        self.tables = TokenTables(policy)
        self.pool = ThreadPoolExecutor(max_workers=max(1, limits.env_workers))
        self.timings: Counter = Counter()  # seconds: "generate", "tools"
        self.sampled_tokens = 0
        self.fed_tokens = 0  # tokens run through the model (prefill + decode); a KV fork adds none for its prefix
        self._owned_envs: list[gym.Env] = []

    # --- public API ---------------------------------------------------------------------------

    def rollout(self, envs: Sequence[gym.Env], seeds: Sequence[int], groups: Sequence[int],
                generator: torch.Generator) -> list[Episode]:
        """Reset ``envs[k]`` with ``seeds[k]`` and play one episode in each, batched."""
        rows = []
        for env, seed, group in zip(envs, seeds, groups):
            _, info = env.reset(seed=int(seed))
            ids = self.policy.prompt_ids(info["messages"])
            n = len(ids)
            ep = Episode(group=int(group), seed=int(seed), prompt_len=n, ids=ids, logp=[0.0] * n,
                         entropy=[0.0] * n, mask=[False] * n, turn=[-1] * n,
                         segment=[int(Segment.TOOL_RESPONSE)] * n, turn_starts=[n])
            rows.append(_Row(ep, env, pending=list(ids), turn_ids=[]))
        self._run(rows, KVBatch.empty(len(rows), self.policy.device), generator)
        return [r.ep for r in rows]

    def branch(self, points: Sequence[tuple[Episode, int]], generator: torch.Generator) -> list[Episode]:
        """Continue each ``(episode, position)``: keep tokens [0, position) and sample from there."""
        if not points:
            return []
        rows, kv_rows, widths, n_real = [], [], [], []
        for parent, p in points:
            if parent.kv is None:
                raise RuntimeError("episode has no KV state: run the engine with keep_branch_state=True to branch")
            if not (parent.prompt_len <= p <= len(parent.ids)) or p < 2:
                raise ValueError(f"branch position {p} outside the generated part [{parent.prompt_len}, {len(parent.ids)}]")
            k = max(i for i, s in enumerate(parent.turn_starts) if s <= p)
            if k < len(parent.turn_ends) and p > parent.turn_ends[k]:
                raise ValueError(f"branch position {p} lies inside a tool response (turn {k} ends at {parent.turn_ends[k]})")
            ep = Episode(group=parent.group, seed=parent.seed, prompt_len=parent.prompt_len, ids=parent.ids[:p],
                         logp=parent.logp[:p], entropy=parent.entropy[:p], mask=parent.mask[:p], turn=parent.turn[:p],
                         segment=parent.segment[:p], turn_starts=parent.turn_starts[:k + 1],
                         turn_ends=parent.turn_ends[:k], tool_calls=0, parent=parent, branch_position=p,
                         cols=parent.cols[:p - 1], snapshots=parent.snapshots[:k])
            env = fork_env(parent.snapshots[k])
            self._owned_envs.append(env)
            turn_ids = parent.ids[parent.turn_starts[k]:p]
            done = bool(turn_ids) and self._turn_stops(turn_ids)
            # A complete turn (``keep`` at a turn's last token) goes straight to the env; its last token is
            # fed with the tool response, as in an unbranched episode.
            rows.append(_Row(ep, env, pending=[] if done else [parent.ids[p - 1]], turn_ids=turn_ids, turn_done=done))
            kv_rows.append(parent.kv)
            widths.append(parent.cols[p - 2] + 1)
            n_real.append(p - 1)
        kv = KVBatch.from_rows(kv_rows, widths, n_real, self.policy.device)
        self._run(rows, kv, generator)
        return [r.ep for r in rows]

    def release(self) -> None:
        """Close the env forks (snapshots, branch envs) made since the last release."""
        for env in self._owned_envs:
            env.close()
        self._owned_envs.clear()

    def close(self) -> None:
        self.release()
        self.pool.shutdown()

    # --- the loop -------------------------------------------------------------------------------

    def _run(self, rows: list[_Row], kv: KVBatch, generator: torch.Generator) -> None:
        live = list(rows)
        with eval_mode(self.policy.model):
            while live:
                t0 = time.perf_counter()
                self._generate_turn(live, kv, generator)
                t1 = time.perf_counter()
                self.timings["generate"] += t1 - t0
                self._env_phase(live)
                self.timings["tools"] += time.perf_counter() - t1
                keep = [i for i, r in enumerate(live) if not r.ended]
                for i, r in enumerate(live):
                    if r.ended and self.limits.keep_branch_state:
                        r.ep.kv = kv.extract(i)
                if len(keep) < len(live):
                    kv.select(torch.tensor(keep, dtype=torch.long, device=self.policy.device))
                    live = [live[i] for i in keep]

    def _feed(self, live: list[_Row], kv: KVBatch) -> torch.Tensor:
        """Feed every row's pending tokens as one ragged chunk; return next-token logits per row."""
        dev = self.policy.device
        width = max(1, max(len(r.pending) for r in live))
        chunk = torch.full((len(live), width), self.policy.pad_id, dtype=torch.long)
        valid = torch.zeros((len(live), width), dtype=torch.bool)
        base = kv.width
        for i, r in enumerate(live):
            n = len(r.pending)
            if n:
                chunk[i, :n] = torch.tensor(r.pending)
                valid[i, :n] = True
                r.ep.cols += range(base, base + n)
                self.fed_tokens += n
                r.pending = []
        return kv.step(self.policy, chunk.to(dev), valid.to(dev))

    def _generate_turn(self, live: list[_Row], kv: KVBatch, generator: torch.Generator) -> None:
        lim = self.limits
        while not all(r.turn_done for r in live):
            logits = self._feed(live, kv)
            ids, logp, ent = (t.tolist() for t in sampling_stats(logits, lim.temperature, generator))
            for i, r in enumerate(live):
                if r.turn_done:
                    continue
                ep, tok = r.ep, ids[i]
                ep.ids.append(tok)
                ep.logp.append(logp[i])
                ep.entropy.append(ent[i])
                ep.mask.append(True)
                ep.turn.append(len(ep.turn_starts) - 1)
                r.turn_ids.append(tok)
                self.sampled_tokens += 1
                if self._turn_stops(r.turn_ids) or len(ep.ids) >= lim.max_episode_tokens:
                    r.turn_done = True
                else:
                    r.pending = [tok]

    def _turn_stops(self, turn_ids: list[int]) -> bool:
        tok = turn_ids[-1]
        if tok in self.policy.end_of_turn_ids or len(turn_ids) >= self.limits.max_turn_tokens:
            return True
        if not self.tables.may_stop[tok]:
            return False
        tail = self.policy.decode(turn_ids[-_STOP_TAIL_TOKENS:])
        return any(s in tail for s in STOP_STRINGS)

    def _env_phase(self, live: list[_Row]) -> None:
        """Close every row's turn: label its segments, step its env, append the tool response or end it."""
        lim = self.limits
        stepping = []
        for r in live:
            ep = r.ep
            start = ep.turn_starts[-1]
            ep.segment[start:] = segment_codes([self.tables.pieces[t] for t in ep.ids[start:]])
            ep.turn_ends.append(len(ep.ids))
            if lim.keep_branch_state:  # the env as it is at the start of this turn: what a branch in it needs
                snap = fork_env(r.env)
                self._owned_envs.append(snap)
                ep.snapshots.append(snap)
            if len(ep.ids) >= lim.max_episode_tokens:
                r.ended, ep.end_reason = True, "token_budget"
                continue
            stepping.append(r)
        results = list(self.pool.map(lambda r: r.env.step(self.policy.decode(r.turn_ids)), stepping))
        for r, (obs, reward, terminated, truncated, info) in zip(stepping, results):
            ep = r.ep
            ep.tool_calls += len(info["tool_calls"])
            ep.tool_errors += sum(c["status"] != "ok" for c in info["tool_calls"])
            ep.faults.update(f["kind"] for f in info["faults"])
            if terminated or truncated:
                r.ended = True
                ep.reward, ep.success = float(reward), bool(info["success"])
                ep.infra_failure = bool(info["infra_failure"])
                ep.end_reason = "answer" if terminated else info.get("truncation_reason", "truncated")
                continue
            response = self.policy.tool_response_ids(obs, r.turn_ids)
            if len(ep.ids) + len(response) + 1 > lim.max_episode_tokens:
                r.ended, ep.end_reason = True, "token_budget"
                continue
            k = len(ep.turn_starts) - 1
            n = len(response)
            ep.ids += response
            ep.logp += [0.0] * n
            ep.entropy += [0.0] * n
            ep.mask += [False] * n
            ep.turn += [k] * n
            ep.segment += [int(Segment.TOOL_RESPONSE)] * n
            ep.turn_starts.append(len(ep.ids))
            r.pending = [r.turn_ids[-1]] + response
            r.turn_ids, r.turn_done = [], False
