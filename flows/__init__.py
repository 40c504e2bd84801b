"""Prefect flows of alps (thin: every step calls alps_client)."""
