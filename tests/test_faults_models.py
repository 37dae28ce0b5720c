"""Statistical tests of the fault models, drawn through the injector exactly as the env draws them.

Tolerances are stated in probability space: for n = 5,000 draws the sample q-quantile's
CDF value has standard deviation sqrt(q(1-q)/n) (0.0071 at the median, 0.0014 at p99), so
"within tolerance" means the sample quantile lies between the model's own quantiles at
q -/+ 4 sd. ``model.sample`` is the model's quantile function, so those bounds are exact.
The draws are seeded, so these tests are deterministic; the tolerances say why they pass.
"""
import math

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
    search = prof.tools["search"]
    assert search.bursts.kind == "connection_reset" and search.rate_limit.burst == 3
    # a per-tool override changes only what it names: the rest comes from the (overridden) default
    assert search.latency_correlation == 0.3 and search.hostile_rate == PRESETS["chaos"].default.hostile_rate
    assert FaultProfile.from_dict(prof.to_dict()) == prof


@pytest.mark.parametrize("spec, message", [
    ({"default": {"bursts": {"p_enter": 0.1, "p_exit": 0}}}, "p_exit"),
    ({"default": {"bursts": {"p_enter": 0.1, "stay": 1}}}, r"unknown key\(s\) \['stay'\] in default.bursts"),
    ({"default": {"rate_limit": {"rate_per_s": -1}}}, "rate_per_s"),
    ({"default": {"rate_limit": {"burst": 0.5}}}, "burst"),
    ({"default": {"corruption_kinds": ["garbled"]}}, "unknown corruption kind"),
    ({"default": {"hostile_templates": ["nice"]}}, "unknown hostile template"),
    ({"default": {"latency_correlation": 1.0}}, "latency_correlation"),
    ({"default": {"hostile_rate": 2}}, "hostile_rate"),
    ({"default": {"network": {"bandwidth_bytes_per_s": -5}}}, "bandwidth"),
    ({"default": {"latency": {"kind": "pareto", "alpha": 0}}}, "alpha"),
    ({"default": {"latency": {"kind": "normal", "median_s": 1}}}, "unknown parameter"),
    ({"tools": {"python": {"eror_rate": 0.1}}}, r"tools.python"),
    ({"pairing": "sometimes"}, "pairing"),
    ({"attribution": "blame"}, "attribution"),
    ({"hostile_penalty": -1}, "hostile_penalty"),
    ({"patience": {"per_second": -1}}, "patience.per_second"),
    ({"real_time": "yes"}, "real_time"),
])
def test_validation_names_the_problem(spec, message):
    with pytest.raises(ValueError, match=message):
        resolve_profile(spec)
