"""jzi runtime: the deploy side. Never imports torch."""
