"""Gymnasium's env checker on every registered appo/* env under every fault preset."""
import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import appo_envs
from appo_envs.faults import PRESETS


@pytest.mark.parametrize("profile", sorted(PRESETS))
@pytest.mark.parametrize("env_id", sorted(appo_envs.ENVIRONMENTS))
def test_check_env_every_env_every_preset(env_id, profile):
    env = gym.make(env_id, faults=profile, render_mode="ansi")
    try:
        check_env(env.unwrapped)
    finally:
        env.close()
