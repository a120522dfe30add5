"""The local API the reader software calls, and what it reports.

Owns the aiohttp server on the unix socket (server) with its route groups (library, notes,
notices), the status report (status), and a client of the local API for the cli and tools
(client). Serves from the store only and never waits on the network. May import every other room
of daemon; nothing but app and cli imports it.
"""
