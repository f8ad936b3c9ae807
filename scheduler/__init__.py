"""pingan-broadcast: weekly anti-fraud SMS and letters, counted against population quotas."""

__version__ = "0.1.0"
