"""The order service: HTTP API, transactional outbox and its relay (``python -m orders``)."""
