"""REST API and dashboard (issue 7)."""
