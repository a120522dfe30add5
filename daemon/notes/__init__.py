"""The reader's notes, highlights, bookmarks and reading positions, and other readers' passages.

Owns the annotation SQL on its own synchronous=FULL connection (store), the outbox push and
changes pull (annotation_sync), and the popular passages prefetched per book (shared_highlights).
The merge rule itself is protocol.merge, shared with the service. May import protocol, the
process level and radio.windows; never content or api.
"""
