"""Fakes for unit tests: the clock and the service (the only effects the project lets tests fake,
with the battery and the link)."""
