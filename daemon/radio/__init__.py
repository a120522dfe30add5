"""The link to the service and the radio that carries it.

Owns the push channel with its keep-alive and polling fallback (connectivity), the radio's wake
windows that deferred work rides (windows), the pure decision of when to wake (wake), and the
battery and charging state (power). May import protocol and the process level; never content,
notes or api. wake is pure.
"""
