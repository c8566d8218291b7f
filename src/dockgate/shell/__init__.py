"""The asyncio shell: everything that touches sockets, in rooms.

    proxy        Proxy, serve, run: the process, signals, graceful shutdown
    listeners    binding TCP/TLS/unix sockets; who is calling (decision.Client)
    connection   one client connection: the request pipeline, in callbacks
    forward      one allowed request's trip to the daemon (pool, body, retry, 502)
    relay        one daemon response to the client, and the response filters
    feeds        live /events streams asking the same share one daemon stream
    hijack       raw sessions after 101 or a raw 200 stream; half-close
    upstream     connections to the daemon, the keep-alive pool, fact fetches
    workers      the pre-fork supervisor (imports nothing else of the shell)
    audit        the audit trail: one JSON line per decision, batched writes

Imports go one way: proxy -> connection -> forward -> relay -> upstream,
forward -> feeds -> upstream, and connection -> hijack -> upstream; audit and
listeners use nothing of the shell.
Nothing reaches back by import: a flight reports to its connection through
``forward.Origin``, the relay through ``relay.Downstream`` (a few callbacks), a
hijacked session through two callables, and a connection asks its proxy through
``connection.Host``: traits the connection and the proxy name as bases.
"""
