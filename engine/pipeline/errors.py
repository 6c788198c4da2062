"""RunError: what stops `qstar generate` with one line and a non-zero exit, never a traceback.

Its own module so that run.py and distributed/ both import it and neither imports the other
(run.py -> distributed, one way). Not for: dataset or resume errors (data.DataError, store.ResumeError).
"""


class RunError(RuntimeError):
    """Stops the run with a message and a non-zero exit (never a traceback)."""
