"""Which model serves a request, and with which parameters: pure functions over the registry."""
