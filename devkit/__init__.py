"""The developer's kit: what needs both the device and the service, so neither ships it.

The demo (stub + daemon + a purchase, read back offline), the link emulator that shapes loopback
to a device profile's link (linkemu), and running child processes (children). It may import
daemon and server_stub; daemon never imports it.
"""
