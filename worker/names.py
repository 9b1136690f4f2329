"""Task and queue names shared by the node (producer) and the workers (consumers)."""

QUEUE_SCORE = "score"
QUEUE_DELIVER = "deliver"

TASK_SCORE_INSTANCE = "cxr_triage.score_instance"
