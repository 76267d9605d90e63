"""The one training loop shared by every policy."""
