"""statehost's server: the HTTP API, storage, auth, timers and subscriptions around the runtime."""
