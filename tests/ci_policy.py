"""What a test does when something it needs is missing: skip locally, fail in CI.

.ci/run sets CI=true and installs everything (Docker engine and image, Chromium), so in CI a
missing dependency is a broken setup, never a reason to skip.
"""
from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def skip_or_fail(problem: str) -> None:
    """Skip the calling test with ``problem`` as the reason, or fail it when running in CI."""
    if in_ci():
        pytest.fail(f"must be testable in CI: {problem}")
    pytest.skip(problem)
