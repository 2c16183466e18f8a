"""Preference data at scale: Bradley–Terry ratings against choix, quality control and snapshots
of 1,000,000 judgments (``python -m benchmarks.feedback``)."""
