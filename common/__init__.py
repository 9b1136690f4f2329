"""Shared base: TRIAGE_* settings readers, the error base class, queue names and the Celery
app factory. Every other package may import it; it imports none of them."""
