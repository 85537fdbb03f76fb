"""The local control plane: a versioned JSON-lines protocol on a unix socket.

* :mod:`edged.control.protocol` - version, error codes, wire forms and result shapes;
* :mod:`edged.control.server` - the daemon side (transport, framing, permissions);
* :mod:`edged.control.client` - the typed client ``edgectl`` and the tests use.

The methods themselves live with the daemon (``edged.daemon.methods``).
"""
