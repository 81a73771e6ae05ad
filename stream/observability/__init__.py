"""What operators scrape and probe: Prometheus metrics, health checks, the HTTP server."""
