"""spanqa's batch evaluation (``spanqa eval``) and benchmark scripts."""
