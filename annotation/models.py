"""Raters, campaigns, items, leases and judgments (built in the rating issue)."""
