"""The asyncio shell: everything that touches sockets, in rooms.

    proxy        Proxy, serve, run: the process, signals, graceful shutdown
    listeners    binding TCP/TLS/unix sockets; who is calling (decision.Client)
    connection   one client connection: the request pipeline, in callbacks
    relay        one daemon response to the client, and the response filters
    hijack       raw sessions after 101 or a raw 200 stream; half-close
    upstream     connections to the daemon, the keep-alive pool, fact fetches
    workers      the pre-fork supervisor (imports nothing else of the shell)
    audit        the audit trail: one JSON line per decision, batched writes

Imports go one way: proxy -> connection -> relay, hijack -> upstream; every
room may use audit and listeners; relay reaches back to the connection only
through ``relay.Downstream`` (a few callbacks), hijack through two callables.
"""
