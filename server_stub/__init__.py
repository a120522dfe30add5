"""server_stub: shelfsync's development content service (a real aiohttp service on loopback).

Public entry points: `server_stub.app.running_stub` (tests, the demo), `server_stub.app.make_app`,
and the `shelfsync-stub` console script (`server_stub.cli:main`). Protocol: docs/PROTOCOL.md.
"""
