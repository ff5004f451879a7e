"""One router per resource: sweeps, runs, the service itself, the dashboard."""
