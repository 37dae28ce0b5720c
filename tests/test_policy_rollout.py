"""Policy wrapper and rollout engine: KV-fork exactness, token-in/token-out, determinism, turn formats."""
from __future__ import annotations

import functools

import gymnasium as gym
import pytest
import torch

import appo_envs  # noqa: F401
from appo_algo.branching import Segment
from appo_algo.policy import Policy, log_softmax_gather, set_cpu_threads
from appo_algo.presets import load_policy
from appo_algo.rollout import KVBatch, RolloutEngine, RolloutLimits, segment_codes
from appo_algo.tiny import SMOKE_ENV_KWARGS, SMOKE_OPTIONS
from appo_algo.trainer import pack_episodes

# Half the python calls fail, so multi-turn episodes with faults are the norm.
FAULTY = {"base": "flaky", "default": {"error_rate": 0.5, "error_kinds": {"exception": 1, "timeout": 1}}}
ENV_KW = {**SMOKE_ENV_KWARGS, "budgets": {"max_turns": 4, "max_observation_chars": 512}}


@functools.lru_cache(maxsize=1)
def tiny_policy() -> Policy:
    """The tiny preset (smoke size), built once per machine and cached (honours APPO_CACHE_DIR)."""
    set_cpu_threads(1)
    return load_policy("tiny", SMOKE_OPTIONS, device="cpu")


def make_envs(n: int, faults=FAULTY) -> list[gym.Env]:
    return [gym.make("appo/CodeExec-v0", faults=faults, **ENV_KW) for _ in range(n)]


def full_logits(policy: Policy, ids: list[int]) -> torch.Tensor:
    """Logits of a whole sequence run from scratch in one forward pass: [len, V]."""
    x = torch.tensor([ids])
    with torch.no_grad():
        return policy.forward(x, torch.ones_like(x), torch.arange(len(ids))[None])[0]


@pytest.fixture(scope="module")
def rollout_state():
    policy = tiny_policy()
    engine = RolloutEngine(policy, RolloutLimits(max_turn_tokens=96, max_episode_tokens=640))
    envs = make_envs(6)
    # Seeds whose first python calls get injected errors under FAULTY: multi-turn retries follow.
    episodes = engine.rollout(envs, [0, 0, 4, 4, 6, 6], [0, 0, 1, 1, 2, 2], torch.Generator().manual_seed(0))
    yield policy, engine, envs, episodes
    engine.close()
    for env in envs:
        env.close()


# Incremental decoding and one full forward multiply matrices of different shapes: fp32 rounding
# differs by ~1e-5 on logits of magnitude ~10, whatever the cache does.
FULL_FORWARD_ATOL = 5e-5


def _assert_records_match_full_forward(policy: Policy, ep, start: int) -> None:
    logits = full_logits(policy, ep.ids)
    pos = [t for t in range(max(start, 1), len(ep.ids)) if ep.mask[t]]
    assert pos, "episode sampled no tokens"
    idx = torch.tensor(pos)
    ref_logp = log_softmax_gather(logits[idx - 1], torch.tensor(ep.ids)[idx], 1.0)
    ref_ent = torch.distributions.Categorical(logits=logits[idx - 1]).entropy()
    torch.testing.assert_close(torch.tensor([ep.logp[t] for t in pos]), ref_logp, atol=FULL_FORWARD_ATOL, rtol=0)
    torch.testing.assert_close(torch.tensor([ep.entropy[t] for t in pos]), ref_ent, atol=FULL_FORWARD_ATOL, rtol=0)


def test_batched_ragged_rollout_matches_full_forward(rollout_state):
    policy, _, _, episodes = rollout_state
    assert any(len(e.turn_ends) >= 2 for e in episodes), "need multi-turn episodes (ragged tool responses)"
    for ep in episodes:
        _assert_records_match_full_forward(policy, ep, ep.prompt_len)


def test_kv_fork_logits_equal_full_prefix_rerun(rollout_state):
    """A forked cache (made in a ragged batch with holes) continues exactly like a fresh prefill of the prefix."""
    policy, _, _, episodes = rollout_state
    one = torch.ones(1, 1, dtype=torch.bool)
    for parent in episodes:
        for p in sorted({parent.prompt_len + 1, (parent.prompt_len + len(parent.ids)) // 2, len(parent.ids) - 1}):
            fork = KVBatch.from_rows([parent.kv], [parent.cols[p - 2] + 1], [p - 1], policy.device)
            fresh = KVBatch.empty(1, policy.device)
            with torch.no_grad():
                fresh.step(policy, torch.tensor([parent.ids[:p - 1]]), torch.ones(1, p - 1, dtype=torch.bool))
                for tok in parent.ids[p - 1:-1][:40]:  # the continuation, one token at a time
                    got = fork.step(policy, torch.tensor([[tok]]), one)[0]
                    want = fresh.step(policy, torch.tensor([[tok]]), one)[0]
                    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_branches_reuse_prefix_cache_and_match_full_forward(rollout_state):
    policy, engine, _, episodes = rollout_state
    points = []
    for ep in episodes:
        points.append((ep, ep.prompt_len))  # first sampled token
        points.append((ep, (ep.prompt_len + ep.turn_ends[0]) // 2))  # mid first turn
        points.append((ep, ep.turn_ends[0]))  # "keep" semantics at a turn's last token: the turn is complete
        if len(ep.turn_starts) > 1:
            points.append((ep, ep.turn_starts[1]))  # right after a tool response (ARPO's branch point)
    fed0 = engine.fed_tokens
    branches = engine.branch(points, torch.Generator().manual_seed(1))
    fed = engine.fed_tokens - fed0
    # No prefix is prefilled again: the model sees only the token before the branch point and what follows it.
    assert fed == sum(len(b.ids) - b.branch_position for b in branches)
    for (parent, p), b in zip(points, branches):
        assert b.ids[:p] == parent.ids[:p] and b.parent is parent and b.branch_position == p
        _assert_records_match_full_forward(policy, b, p)
    engine.release()


def test_token_in_token_out_multi_turn_with_faults(rollout_state):
    policy, _, envs, episodes = rollout_state
    saw_fault = saw_multi_turn = False
    packed = pack_episodes(episodes, policy.pad_id, policy.device)
    for r, (ep, env) in enumerate(zip(episodes, envs)):
        transcript = env.unwrapped.state.transcript
        messages = [{"role": role, "content": text} for role, text in transcript[:2]]
        assert ep.ids[:ep.prompt_len] == policy.prompt_ids(messages)
        exchanges = transcript[2:]
        actions, observations = exchanges[0::2], exchanges[1::2]
        for k, (start, end) in enumerate(zip(ep.turn_starts, ep.turn_ends)):
            assert all(ep.mask[start:end]) and ep.segment[start:end].count(int(Segment.TOOL_RESPONSE)) == 0
            if k < len(actions):  # a turn cut by the token budget never reaches the env
                assert actions[k] == ("assistant", policy.decode(ep.ids[start:end]))
            if k + 1 < len(ep.turn_starts):
                response = policy.tool_response_ids(observations[k][1], ep.ids[start:end])
                assert ep.ids[end:ep.turn_starts[k + 1]] == response
                assert not any(ep.mask[end:ep.turn_starts[k + 1]])
        assert sum(ep.mask) == sum(e - s for s, e in zip(ep.turn_starts, ep.turn_ends))
        # What the loss sees: exactly these ids, the sampled positions as its mask, the sampling log-probs.
        n = len(ep.ids)
        assert packed.ids[r, :n].tolist() == ep.ids and packed.attn[r, n:].sum() == 0
        assert packed.mask[r, :n].tolist() == ep.mask and not packed.mask[r, n:].any()
        assert packed.logp_old[r, :n].tolist() == pytest.approx(ep.logp, abs=0)
        saw_fault |= sum(v for k, v in ep.faults.items() if k != "latency") > 0
        saw_multi_turn |= len(ep.turn_ends) >= 2
    assert saw_fault and saw_multi_turn, "the test needs multi-turn episodes that hit injected faults"


def test_rollouts_are_deterministic_for_a_seed():
    policy = tiny_policy()
    runs = []
    for _ in range(2):
        engine = RolloutEngine(policy, RolloutLimits(max_turn_tokens=64, max_episode_tokens=400,
                                                     keep_branch_state=False))
        envs = make_envs(3)
        eps = engine.rollout(envs, [5, 5, 6], [0, 0, 1], torch.Generator().manual_seed(42))
        runs.append([(e.ids, e.logp, e.reward, e.end_reason) for e in eps])
        engine.close()
        for env in envs:
            env.close()
    assert runs[0] == runs[1]


def test_segment_codes_label_tool_calls_and_answers():
    pieces = ["Let me ", "run", "<tool_call>", '{"name": ', '"python"}', "</tool_call>"]
    R, T, A = int(Segment.REASONING), int(Segment.TOOL_CALL), int(Segment.ANSWER)
    assert segment_codes(pieces) == [R, R, T, T, T, T]
    assert segment_codes(["ok ", "<answer>", "4", "2", "</answer>"]) == [R, A, A, A, A]
    assert segment_codes(["x", "<answer>", "4"]) == [R, A, A]  # cut by the budget: still the answer


def test_chat_template_format_and_end_of_turn_handling():
    base = tiny_policy()
    tok = base.tokenizer
    tok_chat = type(tok).from_pretrained(tok.name_or_path) if tok.name_or_path else tok
    tok_chat.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
                              "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    chat = Policy(base.model, tok_chat, device="cpu")
    plain = Policy(base.model, tok, device="cpu", turn_format="plain")
    assert chat.format.name == "chat_template" and chat.format.tool_role == "tool"
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    # This template renders exactly the plain format, so both paths must give the same ids.
    assert chat.prompt_ids(msgs) == plain.prompt_ids(msgs)
    turn = plain.encode("<answer>1</answer>")
    assert chat.tool_response_ids("obs", turn) == plain.tool_response_ids("obs", turn)
    end = tok.convert_tokens_to_ids("<|end|>")
    # A turn that sampled its own end-of-turn token does not get a second one.
    assert plain.tool_response_ids("obs", turn + [end]) == plain.tool_response_ids("obs", turn)[1:]
