"""shelfsync's device side: one asyncio process on the e-reader.

The rooms (docs/ARCHITECTURE.md has the rules and a walk through them):
  protocol/  what device and service both speak: manifest, codec, crypto, hlc, merge (pure)
  content/   books: delivery, reading back, the library feed, planning, trust, trip, receipts
  notes/     the reader's annotations: their store, outbox sync, shared highlights
  radio/     the link: push channel, radio wake windows, battery
  api/       the local API the reader software calls, the status report, a client of it
and at the top the process level: app (composition root), cli, config, profile, store/ (the
database: its connection and a gateway a domain over it), models, client (the only HTTP to the
service), device_key, clock, logs, notify (systemd's sd_notify, the only raw socket), errors,
backoff, killpoints; systemd/ holds the unit and an example config.
Nothing here imports server_stub, devkit, bench or tests (tests/unit/test_layers.py).
"""
