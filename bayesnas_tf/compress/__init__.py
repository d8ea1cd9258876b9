"""Bayesian structured pruning of ordinary CNNs (--mode=compress; the
paper's Algorithm 3).

What lives here: chains, weight groups, masks and slimming (structure.py),
the weight Hessian estimators (weight_hessian.py, weight_diag_backprop.py),
the group prior (group_prior.py, eq. 17-20 on kernel groups), the loop and
its report (compressor.py) and the CNNs trained from scratch (cnn_zoo.py:
LeNet-5, the VGG-like CNN).

What it may import: the packages below it (errors, io_utils, nn, config,
runtime, data) and the search's prior (`search.prior`, whose update it
shares); never a search-space family or the modes.
"""
