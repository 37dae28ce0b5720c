"""Procedural task generators for the appo environments."""
