"""The closed loop, measured: a retraining round on simulated human preferences, its ablation,
and a second round (``python -m benchmarks.round``; see ``__main__``)."""
