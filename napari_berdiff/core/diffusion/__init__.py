"""The Bernoulli diffusion method: the noise schedule and the masked sampler (Algorithm 1)."""
