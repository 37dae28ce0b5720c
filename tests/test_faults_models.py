"""Statistical tests of the fault models, drawn through the injector exactly as the env draws them.

Tolerances are stated in probability space: for n = 5,000 draws the sample q-quantile's
CDF value has standard deviation sqrt(q(1-q)/n) (0.0071 at the median, 0.0014 at p99), so
"within tolerance" means the sample quantile lies between the model's own quantiles at
q -/+ 4 sd. ``model.sample`` is the model's quantile function, so those bounds are exact.
The draws are seeded, so these tests are deterministic; the tolerances say why they pass.
"""
import hashlib
import json
import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appo_envs.faults import (
    Constant,
    Empirical,
    FaultInjector,
    FaultProfile,
    GilbertElliott,
    LogNormal,
    Normal,
    Pareto,
    ParetoNormal,
    PRESETS,
    RateLimit,
    TokenBucket,
    ToolFaults,
    Uniform,
    resolve_profile,
)
from appo_envs.faults.draws import Draws, stream_key, uniforms

N = 5000


def injector(tool_faults: ToolFaults, seed: int = 0) -> FaultInjector:
    key = stream_key(np.random.SeedSequence(seed))
    return FaultInjector(FaultProfile(default=tool_faults), key, key)


def latencies(model, n: int = N, correlation: float = 0.0, seed: int = 0) -> np.ndarray:
    inj = injector(ToolFaults(latency=model, latency_correlation=correlation, timeout_s=1e9), seed)
    return np.array([inj.for_call("t", k).latency_s for k in range(n)])


def assert_quantile(draws: np.ndarray, model, q: float, inflation: float = 1.0) -> None:
    sd = math.sqrt(q * (1 - q) / len(draws)) * inflation
    lo, hi = model.sample(max(q - 4 * sd, 0.0)), model.sample(min(q + 4 * sd, 1 - 1e-12))
    got = np.quantile(draws, q)
    assert lo <= got <= hi, f"{model}: sample q{q} = {got:.6g} outside [{lo:.6g}, {hi:.6g}]"


MODELS = [
    Uniform(low_s=0.05, high_s=0.25),
    Normal(mean_s=1.0, sd_s=0.1),
    LogNormal(median_s=0.2, p99_s=2.0),
    Pareto(scale_s=0.05, alpha=1.5),
    ParetoNormal(mu_s=0.1, sigma_s=0.02),
]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.kind)
def test_latency_model_median_and_p99_over_5000_draws(model):
    draws = latencies(model)
    assert_quantile(draws, model, 0.5)
    assert_quantile(draws, model, 0.99)


def test_closed_forms_of_the_models():
    """The quantile functions equal the textbook / netem formulas they claim."""
    assert LogNormal(median_s=0.2, p99_s=2.0).sample(0.99) == pytest.approx(2.0)
    assert LogNormal(median_s=0.2, p99_s=2.0).sample(0.5) == pytest.approx(0.2)
    assert Pareto(scale_s=0.05, alpha=1.5).sample(0.5) == pytest.approx(0.05 * 2 ** (1 / 1.5))
    assert Pareto(scale_s=0.05, alpha=1.5).sample(0.99) == pytest.approx(0.05 * 100 ** (1 / 1.5))
    # netem paretonormal table: (z + 3 * (4/3) * ((1-u)^(-1/3) - 1.5)) / 4, in units of sigma
    assert ParetoNormal.table(0.5) == pytest.approx(2 ** (1 / 3) - 1.5)
    assert ParetoNormal.table(0.99) == pytest.approx(2.3263478740 / 4 + 100 ** (1 / 3) - 1.5)
    assert ParetoNormal.table(1 - 1e-9) == pytest.approx(32767 / 8192)  # clipped like netem's int16 table
    assert Normal(mean_s=0.01, sd_s=1.0).sample(0.001) == 0.0  # clipped at 0
    assert Constant(0.3).sample(0.9) == 0.3


def test_normal_mean_and_sd():
    draws = latencies(Normal(mean_s=1.0, sd_s=0.1))
    # sd of the sample mean is 0.1/sqrt(5000) = 0.0014; of the sample sd about 0.1/sqrt(2*5000) = 0.001
    assert abs(draws.mean() - 1.0) < 4 * 0.0014
    assert abs(draws.std() - 0.1) < 4 * 0.001


def test_empirical_from_a_file_of_measured_latencies(tmp_path):
    measured = np.random.default_rng(3).gamma(shape=2.0, scale=40.0, size=800)  # ms, a plausible RPC profile
    path = tmp_path / "rpc_ms.txt"
    path.write_text("# measured round trips, ms\n" + "\n".join(f"{v:.3f}" for v in measured) + "\n")
    model = Empirical(path=str(path), unit="ms")
    values = np.sort(np.round(measured, 3)) / 1000
    assert model.sample(0.0) == pytest.approx(values[0]) and model.sample(1 - 1e-12) == pytest.approx(values[-1])
    assert model.sample(0.5) == pytest.approx(np.quantile(values, 0.5))  # same interpolation as numpy's default
    draws = latencies(model)
    assert_quantile(draws, model, 0.5)
    assert_quantile(draws, model, 0.99)
    assert model.scaled(0.5).sample(0.5) == pytest.approx(model.sample(0.5) / 2)
    assert resolve_profile({"default": {"latency": model.to_dict()}}).default.latency == model


def test_empirical_file_errors_say_where(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("0.1\nfast\n")
    with pytest.raises(ValueError, match="bad.txt:2"):
        Empirical(path=str(bad))
    with pytest.raises(ValueError, match="exactly one of path or values_s"):
        Empirical()
    good = tmp_path / "good.txt"
    good.write_text("1\n2\n")
    with pytest.raises(ValueError, match="unit must be one of"):
        Empirical(path=str(good), unit="h")
    with pytest.raises(ValueError, match="at least 2 values"):
        Empirical(values_s=(1.0,))


@pytest.mark.parametrize("rho", [0.5, 0.9])
def test_correlated_latency_keeps_its_marginal_and_has_the_stated_correlation(rho):
    model = LogNormal(median_s=0.2, p99_s=2.0)
    draws = latencies(model, correlation=rho)
    # AR(1) normal scores: effective sample size shrinks by (1 - r)/(1 + r) with r the lag-1 correlation.
    inflation = math.sqrt((1 + rho) / (1 - rho))
    assert_quantile(draws, model, 0.5, inflation)
    assert_quantile(draws, model, 0.99, inflation)
    # Gaussian copula: Spearman's rho of consecutive calls is (6/pi) asin(rho/2); its sd here is about 0.02.
    ranks = np.argsort(np.argsort(draws))
    spearman = np.corrcoef(ranks[:-1], ranks[1:])[0, 1]
    assert abs(spearman - 6 / math.pi * math.asin(rho / 2)) < 0.05
    uncorrelated = latencies(model)
    r0 = np.argsort(np.argsort(uncorrelated))
    assert abs(np.corrcoef(r0[:-1], r0[1:])[0, 1]) < 0.05


def test_gilbert_elliott_burst_lengths_and_bad_fraction():
    ge = GilbertElliott(p_enter=0.05, p_exit=0.2, error_in_bad=1.0)
    inj = injector(ToolFaults(bursts=ge))
    n = 20_000
    failed = np.array([inj.for_call("api", k).error == "http_5xx" for k in range(n)])
    runs, length = [], 0
    for f in failed:
        if f:
            length += 1
        elif length:
            runs.append(length)
            length = 0
    # Runs are geometric with mean 1/p_exit = 5 (sd 4.5); ~800 runs give a standard error of 0.16.
    assert abs(np.mean(runs) - ge.mean_burst_calls) < 4 * 4.5 / math.sqrt(len(runs))
    # Stationary bad fraction p/(p+r) = 0.2; with runs of 5 the sd of the fraction is about 0.007.
    assert abs(failed.mean() - ge.stationary_bad) < 0.03
    assert all(inj.for_call("api", k).source == "burst" for k in np.flatnonzero(failed)[:50])


def test_gilbert_elliott_error_in_bad_below_one_thins_the_bursts():
    inj = injector(ToolFaults(bursts=GilbertElliott(p_enter=0.05, p_exit=0.2, error_in_bad=0.5)))
    failed = np.mean([inj.for_call("api", k).error is not None for k in range(20_000)])
    assert abs(failed - 0.2 * 0.5) < 0.02


@settings(max_examples=300, deadline=None)
@given(rate=st.floats(0.1, 20), burst=st.integers(1, 10),
       gaps=st.lists(st.floats(0, 3), min_size=1, max_size=200))
def test_token_bucket_never_admits_more_than_its_rate(rate, burst, gaps):
    bucket = TokenBucket(RateLimit(rate_per_s=rate, burst=burst))
    times = np.cumsum(gaps)
    admitted = [t for t in times if bucket.admit(float(t))[0]]
    # In every window [a, b] the admitted calls number at most burst + rate * (b - a)
    # (up to the bucket's 1e-9-token allowance for float rounding of elapsed times).
    for i in range(len(admitted)):
        for j in range(i, len(admitted)):
            assert j - i + 1 <= burst + rate * (admitted[j] - admitted[i]) + 1e-6


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(0.1, 20), burst=st.integers(1, 5), t=st.floats(0, 10))
def test_token_bucket_retry_after_is_enough(rate, burst, t):
    bucket = TokenBucket(RateLimit(rate_per_s=rate, burst=burst))
    while True:
        ok, retry_after = bucket.admit(t)
        if not ok:
            break
    assert retry_after >= 1 and retry_after == math.ceil(retry_after)
    assert bucket.admit(t + retry_after)[0]  # waiting what Retry-After says is always enough


def test_bernoulli_error_mix():
    inj = injector(ToolFaults(error_rate=0.3, error_kinds={"exception": 3, "http_429": 1}, retry_after_s=2))
    faults = [inj.for_call("t", k) for k in range(N)]
    errors = [f for f in faults if f.error]
    assert abs(len(errors) / N - 0.3) < 4 * math.sqrt(0.3 * 0.7 / N)
    share_429 = np.mean([f.error == "http_429" for f in errors])
    assert abs(share_429 - 0.25) < 4 * math.sqrt(0.25 * 0.75 / len(errors))
    assert {f.retry_after_s for f in errors if f.error == "http_429"} == {2}
    assert all(f.source == "bernoulli" for f in errors)


def test_latency_beyond_the_timeout_is_a_timeout():
    inj = injector(ToolFaults(latency=Pareto(scale_s=1.0, alpha=1.0), timeout_s=10.0))
    faults = [inj.for_call("t", k) for k in range(N)]
    timeouts = [f for f in faults if f.error == "timeout"]
    assert all(f.source == "latency" and f.latency_s >= 10 for f in timeouts)
    assert abs(len(timeouts) / N - 0.1) < 4 * math.sqrt(0.09 / N)  # P(Pareto(1, 1) >= 10) = 0.1


def test_content_fault_rates_and_mix():
    inj = injector(ToolFaults(corruption_rate=0.2, corruption_kinds={"truncated": 1, "stale": 1}, hostile_rate=0.1))
    faults = [inj.for_call("t", k) for k in range(N)]
    corrupted = [f.corruption for f in faults if f.corruption]
    assert abs(len(corrupted) / N - 0.2) < 4 * math.sqrt(0.16 / N)
    assert set(corrupted) == {"truncated", "stale"}
    hostile = [f.hostile for f in faults if f.hostile]
    assert abs(len(hostile) / N - 0.1) < 4 * math.sqrt(0.09 / N)
    assert len({h.canary for h in hostile}) == len(hostile)  # canaries are unique


def test_intensity_scales_every_rate_monotonically():
    profile = PRESETS["chaos"]
    key = stream_key(np.random.SeedSequence(9))
    counts = []
    for x in (0.0, 0.25, 0.5, 1.0):
        inj = FaultInjector(profile.with_intensity(x), key, key)
        fs = [inj.for_call("python", k) for k in range(2000)]
        counts.append((sum(f.error is not None for f in fs), sum(f.corruption is not None for f in fs),
                       sum(f.hostile is not None for f in fs), sum(f.latency_s for f in fs)))
    assert counts[0] == (0, 0, 0, 0)
    for lower, higher in zip(counts, counts[1:]):
        assert all(a <= b for a, b in zip(lower, higher)), counts
    zero = profile.with_intensity(0.0)
    assert zero.for_tool("x").rate_limit is None and not zero.effective_patience.active
    assert profile.with_intensity(0.5).for_tool("x").rate_limit.rate_per_s == 2 * profile.default.rate_limit.rate_per_s


def test_draws_class_equals_the_pure_function():
    key = stream_key(np.random.SeedSequence(4))
    d = Draws(key)
    for n in (1, 4, 5, 8):
        assert d.uniforms("call:x", 17, n) == uniforms(key, "call:x", 17, n)


# sha256 (first 16 hex digits) of the effective faults of each tool at intensities 1 and 0.5, as
# ToolFaults.to_dict writes them (key order included: error kinds are picked in that order).
PRESET_TOOL_DIGESTS = {
    "clean": ("3e3d1345673cad12",) * 4,
    "flaky": ("d02a7c6736c98695",) * 4,
    "degraded": ("aae5b6390fd6e473",) * 4,
    "hostile": ("0d515051f18cded6",) * 4,
    "impatient": ("2c363f70ceae1600",) * 4,
    "chaos": ("daa1c5a0549bff09", "46c4d89f18df9af6", "46c4d89f18df9af6", "46c4d89f18df9af6"),
}


@pytest.mark.parametrize("name", sorted(PRESET_TOOL_DIGESTS))
def test_preset_effective_faults_are_pinned(name):
    """Every preset's effective per-tool faults (python, search, api, any other tool) stay exactly as they were."""
    profile = PRESETS[name]
    digests = tuple(hashlib.sha256(json.dumps({x: profile.with_intensity(x).for_tool(t).to_dict() for x in (1.0, 0.5)})
                                   .encode()).hexdigest()[:16] for t in ("python", "search", "api", "echo"))
    assert digests == PRESET_TOOL_DIGESTS[name]


def test_presets_and_full_profiles_round_trip(tmp_path):
    for p in PRESETS.values():
        assert FaultProfile.from_dict(p.to_dict()) == p
    import yaml

    p = tmp_path / "mine.yaml"
    p.write_text(yaml.safe_dump({
        "base": "chaos", "intensity": 0.5, "attribution": "terminal", "hostile_penalty": 2.0,
        "default": {"latency": {"kind": "paretonormal", "mu_s": 0.1, "sigma_s": 0.05}, "latency_correlation": 0.3},
        "tools": {"search": {"error_rate": 0.5, "bursts": {"p_enter": 0.1, "p_exit": 0.5, "kind": "connection_reset"},
                             "rate_limit": {"rate_per_s": 2, "burst": 3}, "corruption_kinds": ["stale"],
                             "hostile_templates": ["delete_accounts"], "network": {"bandwidth_bytes_per_s": 1e5}}},
    }))
    prof = resolve_profile(str(p))
    search = prof.tool_faults("search")
    assert search.bursts.kind == "connection_reset" and search.rate_limit.burst == 3
    # a per-tool override changes only what it names: the rest comes from the (overridden) default
    assert search.latency_correlation == 0.3 and search.hostile_rate == PRESETS["chaos"].default.hostile_rate
    assert FaultProfile.from_dict(prof.to_dict()) == prof
    assert FaultProfile.from_dict(yaml.safe_load(yaml.safe_dump(prof.to_dict()))) == prof


def test_a_default_override_reaches_every_tool_of_a_preset():
    zero = {"error_rate": 0, "hostile_rate": 0, "corruption_rate": 0}
    prof = resolve_profile({"base": "chaos", "default": zero})
    for tool in ("python", "search", "api", "other"):
        spec = prof.for_tool(tool)
        assert (spec.error_rate, spec.hostile_rate, spec.corruption_rate) == (0, 0, 0), tool
    # chaos's python entry changes only what it names (its error kinds add sandbox deaths), now never drawn
    kinds = {**PRESETS["chaos"].default.error_kinds, "sandbox_death": 1}
    assert prof.for_tool("python") == replace(prof.for_tool("search"), error_kinds=kinds)
    assert "sandbox_death" not in prof.for_tool("python").error_kinds_possible
    # a tool's entry wins for the fields it sets, the user's on top of the preset's
    prof = resolve_profile({"base": "chaos", "default": {**zero, "error_kinds": ["exception"]},
                            "tools": {"python": {"hostile_rate": 0.5}, "api": {"error_rate": 0.2}}})
    python, api = prof.for_tool("python"), prof.for_tool("api")
    assert (python.error_rate, python.hostile_rate, python.error_kinds) == (0, 0.5, kinds)
    assert (api.error_rate, api.hostile_rate, api.error_kinds) == (0.2, 0, {"exception": 1.0})
    # to_dict keeps entries partial: a default changed in the plain data still reaches every tool
    data = PRESETS["chaos"].to_dict()
    assert data["tools"] == {"python": {"error_kinds": kinds}}
    data["default"]["error_rate"] = 0.0
    assert FaultProfile.from_dict(data).for_tool("python").error_rate == 0


def test_tool_entries_are_partial_mappings_or_whole_tool_faults():
    whole = ToolFaults(error_rate=0.3)
    prof = FaultProfile(default=ToolFaults(hostile_rate=0.2),
                        tools={"a": {"error_rate": 0.3, "latency": 0.5}, "b": whole})
    assert prof.tool_faults("a") == ToolFaults(hostile_rate=0.2, error_rate=0.3, latency=Constant(0.5))
    assert prof.tool_faults("b") == whole  # a whole ToolFaults sets every field, hostile_rate included
    assert FaultProfile.from_dict(prof.to_dict()) == prof


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("spec, message", [
    ({"default": {"bursts": {"p_enter": 0.1, "p_exit": 0}}},
     r"^default\.bursts\.p_exit must be a finite number in \(0, 1\]"),
    ({"default": {"bursts": {"p_enter": 0.1, "stay": 1}}}, r"^default\.bursts: unknown key\(s\) \['stay'\]"),
    ({"default": {"rate_limit": {"rate_per_s": -1}}}, r"^default\.rate_limit\.rate_per_s must be"),
    ({"default": {"rate_limit": {"burst": 0.5}}}, r"^default\.rate_limit\.burst must be a finite number >= 1"),
    ({"default": {"corruption_kinds": ["garbled"]}}, r"^default\.corruption_kinds: unknown corruption kind"),
    ({"default": {"hostile_templates": ["nice"]}}, r"^default\.hostile_templates: unknown hostile template"),
    ({"default": {"latency_correlation": 1.0}}, r"^default\.latency_correlation must be a finite number in \[0, 1\)"),
    ({"default": {"hostile_rate": 2}}, r"^default\.hostile_rate must be a finite number in \[0, 1\]"),
    ({"default": {"network": {"bandwidth_bytes_per_s": -5}}}, r"^default\.network\.bandwidth_bytes_per_s must be"),
    ({"default": {"latency": {"kind": "pareto", "alpha": 0}}}, r"^default\.latency\.alpha must be"),
    ({"default": {"latency": {"kind": "normal", "median_s": 1}}}, r"^default\.latency: unknown parameter"),
    ({"default": {"latency": {"kind": "gamma"}}}, r"^default\.latency\.kind: unknown latency kind 'gamma'"),
    ({"tools": {"python": {"eror_rate": 0.1}}}, r"^tools\.python: unknown key\(s\) \['eror_rate'\]"),
    ({"pairing": "sometimes"}, "^pairing"),
    ({"attribution": "blame"}, "^attribution"),
    ({"hostile_penalty": -1}, "^hostile_penalty"),
    ({"patience": {"per_second": -1}}, r"^patience\.per_second"),
    ({"real_time": "yes"}, "^real_time"),
    # numbers are finite real numbers (a bool is not one), weights >= 0 with a positive sum
    ({"default": {"error_kinds": {"exception": NAN}}},
     r"^default\.error_kinds\.exception must be a finite number >= 0, got nan"),
    ({"default": {"error_kinds": {"exception": INF, "timeout": 1}}},
     r"^default\.error_kinds\.exception must be a finite"),
    ({"default": {"error_kinds": {"exception": True}}},
     r"^default\.error_kinds\.exception must be a finite number >= 0, got True"),
    ({"default": {"error_kinds": {"exception": 0, "timeout": 0}}},
     r"^default\.error_kinds needs at least one positive weight"),
    ({"default": {"error_kinds": {}}}, r"^default\.error_kinds needs at least one positive weight"),
    ({"default": {"error_kinds": "exception"}}, r"^default\.error_kinds must be a list of names or a mapping"),
    ({"default": {"corruption_kinds": {"stale": -1}}},
     r"^default\.corruption_kinds\.stale must be a finite number >= 0"),
    ({"hostile_penalty": INF}, r"^hostile_penalty must be a finite number >= 0, got inf"),
    ({"hostile_penalty": True}, r"^hostile_penalty must be a finite number >= 0, got True"),
    ({"default": {"timeout_s": True}}, r"^default\.timeout_s must be a finite number > 0, got True"),
    ({"default": {"timeout_s": INF}}, r"^default\.timeout_s must be a finite number > 0, got inf"),
    ({"default": {"cold_start_s": INF}}, r"^default\.cold_start_s must be a finite number"),
    ({"default": {"error_rate": "0.5"}},
     r"^default\.error_rate must be a finite number in \[0, 1\], got '0\.5' \(YAML"),
    ({"tools": {"python": {"bursts": {"p_exit": True}}}},
     r"^tools\.python\.bursts\.p_exit must be a finite number in \(0, 1\], got True"),
    ({"tools": {"python": {"bursts": {"kind": ["x"]}}}}, r"^tools\.python\.bursts\.kind must be one of"),
    ({"tools": {"python": {"bursts": {"error_in_bad": NAN}}}}, r"^tools\.python\.bursts\.error_in_bad must be"),
    ({"tools": {"python": {"rate_limit": {"rate_per_s": INF}}}},
     r"^tools\.python\.rate_limit\.rate_per_s must be a finite"),
    ({"tools": {"python": {"rate_limit": {"burst": INF}}}}, r"^tools\.python\.rate_limit\.burst must be a finite"),
    ({"tools": {"python": {"network": {"slice_delay_s": INF}}}}, r"^tools\.python\.network\.slice_delay_s must be"),
    ({"tools": {"python": {"latency": INF}}},
     r"^tools\.python\.latency\.value_s must be a finite number >= 0, got inf"),
    ({"tools": {"python": {"latency": True}}}, r"^tools\.python\.latency must be a number or a mapping"),
    ({"tools": {"python": {"latency": {"kind": "lognormal", "median_s": 1, "p99_s": INF}}}},
     r"^tools\.python\.latency\.p99_s must be a finite number >= 1, got inf"),
    ({"tools": {"python": {"latency": {"kind": "uniform", "low_s": 0.5, "high_s": 0.1}}}},
     r"^tools\.python\.latency\.high_s must be a finite number >= 0\.5"),
    ({"tools": {"python": {"latency": {"kind": "constant", "value_s": "1e-3"}}}},
     r"^tools\.python\.latency\.value_s must be a finite number >= 0, got '1e-3' \(YAML reads"),
    ({"tools": {"python": {"latency": {"kind": "constant", "value_s": False}}}},
     r"^tools\.python\.latency\.value_s must be"),
    ({"tools": {"python": {"latency": {"kind": "empirical", "values_s": "12"}}}},
     r"^tools\.python\.latency\.values_s must be a list of numbers"),
    ({"tools": {"python": {"latency": {"kind": "empirical", "values_s": [1, NAN]}}}},
     r"^tools\.python\.latency\.values_s\[1\] must be a finite number"),
    ({"tools": {"python": {"latency": {"kind": "pareto", "max_s": 0.01}}}},
     r"^tools\.python\.latency\.max_s must be a number >= 0\.05"),
    ({"tools": {"python": {"latency": {"kind": "empirical", "path": "/nonexistent/lat.txt"}}}},
     r"^tools\.python\.latency\.path: cannot read the latency file"),
    ({"tools": {"python": None}}, r"^tools\.python must be a mapping"),
    ({"tools": {5: {}}}, r"^tools: a tool name must be a string"),
    ({"patience": {"per_turn": INF}}, r"^patience\.per_turn must be a finite number >= 0, got inf"),
    ({"patience": {"base_hazard": False}}, r"^patience\.base_hazard must be a finite number"),
    ({"intensity": True}, r"^intensity must be a finite number in \[0, 1\], got True"),
    ({"name": 5}, r"^name must be a string"),
])
def test_validation_names_the_problem(spec, message):
    with pytest.raises(ValueError, match=message):
        resolve_profile(spec)
