"""Stress-lab diagnostics of the Branching Score: overhead, branch-point locations, stability, Monte Carlo oracle.

Each diagnostic is a function on rollout views (``RolloutView``) or plain arrays, usable on
saved rollouts; ``DiagnosticsCallback`` runs them inside ``APPOTrainer.learn`` every step.
"""
from appo_algo.diagnostics.location import LOCATION_KINDS, location_histogram, token_locations
from appo_algo.diagnostics.oracle import batched, engine_continuations, oracle_check, oracle_impact, rank_agreement
from appo_algo.diagnostics.callback import DiagnosticsCallback, DiagnosticsConfig
from appo_algo.diagnostics.overhead import count_forward_calls, measure_selection
from appo_algo.diagnostics.ranking import bootstrap_ci, spearman, topb_jaccard
from appo_algo.diagnostics.scores import POSITION_SCORERS
from appo_algo.diagnostics.stability import (common_prefix, degenerate_omega_fraction, paired_prefix_stability,
                                              rescoring_stability)

__all__ = [
    "DiagnosticsCallback", "DiagnosticsConfig", "LOCATION_KINDS", "POSITION_SCORERS", "batched", "bootstrap_ci", "common_prefix",
    "count_forward_calls", "degenerate_omega_fraction", "engine_continuations", "location_histogram",
    "measure_selection", "oracle_check", "oracle_impact", "paired_prefix_stability",
    "rank_agreement", "rescoring_stability", "spearman", "token_locations", "topb_jaccard",
]
