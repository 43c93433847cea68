"""Evaluation: long-context tasks, memory-system baselines and the harness (DESIGN §8)."""
