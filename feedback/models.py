"""Quality control, ratings, snapshots and retraining rounds (built in the feedback issue)."""
