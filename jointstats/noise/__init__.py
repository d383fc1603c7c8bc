"""Exact secure noise: coin planning, GF(2) sharing and the discrete Laplace/Gaussian samplers, with their plan cache."""
