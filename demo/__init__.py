"""Demo Restate services, the process launcher (stack) and the load generator (traffic)."""
