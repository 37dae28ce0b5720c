"""The environments of the suite."""
