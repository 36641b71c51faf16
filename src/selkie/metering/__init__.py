"""Metering: Prometheus metrics now; usage events, aggregation and billing come next."""
