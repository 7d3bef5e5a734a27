"""Gunicorn settings for Paylink's web process:
``gunicorn -c gunicorn.conf.py "app:create_app()"``.

``make run`` binds to 127.0.0.1 with ``-b``; on a platform that sets ``PORT`` (Procfile) the
default below listens on every interface. Command-line options win over this file.
"""

from __future__ import annotations

import os

bind = [f"0.0.0.0:{os.environ.get('PORT', '5000')}"]
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = 4
# Build the app once in the master and fork it: a worker recycled by --max-requests (or
# after a crash) serves again in milliseconds instead of re-importing everything. Paylink
# connects nothing in create_app, and its engine and Redis pools reset after a fork.
preload_app = True
accesslog = "-"  # stdout
# One JSON line per request, with the app's request id and endpoint and any customer page's
# token masked (app/logs.py); gunicorn's access_log_format is not used.
logger_class = "app.logs.AccessLog"
errorlog = "-"  # stderr
# gunicorn's control socket sits at one path per user ($HOME/.gunicorn/gunicorn.ctl), which
# two Paylinks on one machine (make run next to the tests) would fight over; we never use it.
control_socket_disable = True

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):

    def child_exit(server, worker):
        """A gunicorn worker ended: drop its live gauges from the shared metric files."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
