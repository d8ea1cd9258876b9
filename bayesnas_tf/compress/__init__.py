"""Bayesian structured pruning of ordinary CNNs (--mode=compress)."""
