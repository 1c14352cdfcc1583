"""A Langfuse-compatible receiver on the standard library, to rehearse against: a separate wing.

The library never imports it; the command (`cli.py`) does.

- `server`: the HTTP server (`Receiver`) and its routes;
- `checks`: what it accepts on the wire, as Langfuse's server does;
- `store`: the SQLite store, read back as Langfuse would show it;
- `faults`: scheduled faults (503s, 429s, hangs, ...);
- `views`, `bodies`: the read API in Langfuse's shapes; request bodies as Langfuse reads them;
- `render`: traces as text trees (`dirigent-langfuse show`).
"""
