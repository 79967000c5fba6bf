"""statehost's Python client (speaks only the wire contract)."""
