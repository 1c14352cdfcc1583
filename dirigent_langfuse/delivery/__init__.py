"""Getting records to Langfuse: one daemon worker thread per stream, and what it owns.

- `worker`: the caller's side (the bounded queue, flush, shutdown) and fork safety (`forks`);
  `state`: what the worker's parts share; `loop`: the threads' loop and its schedule, whose steps
  are `preparing` (encoding), `sending` (a request and its answer) and `spooling` (the spool at
  start and at shutdown);
- `outbox`: the retry buffer the worker sends from; `accounts`: what became of every item;
  `pace`: when the next request may go, and how large;
- `records`: what the worker and a transport hand each other (`Record`, `Report`);
- `client`: the HTTP client (`requests.Session` with a urllib3 `Retry` adapter); `answers`: what
  Langfuse answered, read bounded;
- `spool`: the optional SQLite spool that survives a crash.
"""
