"""Evaluating a detector: metrics, the evaluation protocol, the (L, P) grid and reports."""
