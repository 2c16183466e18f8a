"""What the policy app tells the apps above it, which it may not import.

A signal is used here only because the dependency runs the other way (``annotation`` imports
``policy``): a campaign waiting for candidates learns that a job it waits for finished without
``policy`` knowing campaigns exist. Receivers re-read the job by its id.
"""

from django.dispatch import Signal

# Sent once a candidate job has finished (succeeded or failed) and that is committed, by the
# process that ran it. Arguments: ``job_id`` (int), ``status`` (``JobStatus`` value).
candidate_job_finished = Signal()
