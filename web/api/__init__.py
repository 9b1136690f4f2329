"""The JSON API (``/api``), documented at ``/api/docs``, and the health and metrics endpoints."""
