"""Getting records to Langfuse: one daemon worker thread per stream, and what it owns.

- `worker`: the bounded queue, the thread's loop, the retry buffer, flush and shutdown;
- `outbox`: the retry buffer the worker sends from; `accounts`: what became of every item;
  `pace`: when the next request may go, and how large;
- `records`: what the worker and a transport hand each other (`Record`, `Report`);
- `client`: the HTTP client (`requests.Session` with a urllib3 `Retry` adapter); `answers`: what
  Langfuse answered, read bounded;
- `spool`: the optional SQLite spool that survives a crash.
"""
