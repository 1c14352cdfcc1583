"""Langfuse's two write APIs, as bytes: the legacy ingestion batch and OTLP/JSON spans.

- `ingestion`: `POST /api/public/ingestion` (self-hosted v3);
- `otlp`: `POST /api/public/otel/v1/traces` (Langfuse Cloud, v4), written by `spans`;
- `auto`: the choice between the two, by the version Langfuse reports;
- `encoding`: JSON that never fails, and the cut of oversized fields;
- `limits`: Langfuse's own limits on ids, names and integers (the mapping and the receiver read them).
"""
