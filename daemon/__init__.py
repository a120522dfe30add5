"""shelfsync: the offline content sync daemon for e-readers."""
