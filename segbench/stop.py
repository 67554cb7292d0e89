"""The stop flag of a driver process: set on SIGINT/SIGTERM, read by executors and jobs.

A leaf module (no segbench imports), so the CLI that sets the flag and the executors and jobs that read it all
import it from here without an import cycle.
"""

from __future__ import annotations

import threading

# Set by the CLI's SIGTERM/SIGINT handler: whatever exception the interruption surfaces as inside a job, the job is
# recorded as killed (not failed) and no further job starts.
STOP_REQUESTED = threading.Event()
KILLED_REASON = "interrupted (SIGINT/SIGTERM); continue with --resume"
