"""What the device and the service both speak: one format with one owner.

Owns the manifest format (manifest), zstd frames and dictionaries (codec), signatures, sealing
and key wrapping (crypto), the annotation model both sides merge with (hlc, merge: the service
joins edits with the same code, so both converge on the same state) and the checks of what
enters it (annotation_input), the shapes of ids (ids), and the log line both processes write
(logline). Pure: no I/O, no clock, no asyncio, no SQL or HTTP; it may import only itself,
daemon.errors, the standard library, zstandard and cryptography. The service (server_stub)
imports daemon only through this package and daemon.errors.
"""
