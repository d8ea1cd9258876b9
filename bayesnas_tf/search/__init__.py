"""The BayesNAS search: Hessian, HARD prior update, search loop and genotype derivation."""
