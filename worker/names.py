"""Task and queue names shared by the node (producer) and the workers (consumers)."""

QUEUE_SCORE = "score"
QUEUE_DELIVER = "deliver"

TASK_SCORE_INSTANCE = "cxr_triage.score_instance"  # args [instance_id], queue score
TASK_REPORT_STUDY = "cxr_triage.report_study"  # args [study_id], queue deliver
TASK_DELIVER_REPORT = "cxr_triage.deliver_report"  # args [report_id, destination], queue deliver
