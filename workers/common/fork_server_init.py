"""Imported only by the fence's fork server (model_store.fence._PRELOAD), for this side effect:
the fork server and the model processes it forks ignore SIGTERM and SIGINT. A signal sent to the
worker's whole process group (a supervisor, Ctrl-C) must reach the worker alone, which then
finishes the batches it read on its model processes; they end when the worker closes their pipe
or kills them, and the fork server when the worker exits."""

from __future__ import annotations

import signal

signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
