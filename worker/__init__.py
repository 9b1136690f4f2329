"""Celery workers that score received radiographs and deliver the SR to PACS."""
