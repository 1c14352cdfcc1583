"""BusEvents to Langfuse items, on the host's thread: a pure function over bounded state.

- `items`: the mapping itself (`bus_event_to_items`), over `state` (`MappingState`), writing
  `values` (times, merged bodies) and `ids` (every id derived, OTel's too);
- `pending`: the late-bind buffer (events that came before their scroll was bound);
- `snapshot`: copies of the host's payloads, taken at the call;
- `masking`: the user's `mask`, applied before anything leaves the process;
- `sampling`: which sessions are mirrored, decided per session.
"""
