"""Scoring a reconstruction against the truth: the one metrics module and the paper's resolution analyses."""
