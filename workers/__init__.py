"""RQ job entry points, the scheduler loop and the sweep.

Jobs take ids, re-load state and are idempotent. They run inside the app built by
:func:`workers.runtime.job_app`.
"""
