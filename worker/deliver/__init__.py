"""Delivery: destinations, C-STORE, delivery state and backoff."""
