"""The out-of-band connection service: QP numbers that say where to dial, and the
connections behind ``to_rtr`` by GID + QP number (:mod:`.service`); taking over a socket
an application hands to a QP (:mod:`.sockets`).

It sits below the verbs objects (which use it) and beside the engines (to which it hands
connected sockets through :mod:`tcpverbs.engine.api`); the application's own connection
helpers, :mod:`tcpverbs.cm`, sit above the verbs objects.
"""
