"""Books on the device: what to fetch, fetching it, trusting it, and reading it back.

Owns the delivery worker (delivery: the scheduler; download: one book's download), reading a
resource back from stored frames (reader), the library changes feed (library_sync), the
compression dictionaries (dictionaries), the pure fetch/keep/evict decisions (plan) and manifest
trust rules (trust), trip mode (trip), and delivery receipts (receipts; their SQL is
daemon.store.receipts).
May import protocol and the process level (store, client, clock, logs, errors, ...) and
radio.windows to wait for a wake window; never api or notes. plan and trust are pure.
"""
