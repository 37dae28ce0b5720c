"""APPO learner, baselines, diagnostics, sweeps and reports over the appo_envs suite."""
