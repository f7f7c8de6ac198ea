"""Where work runs: ``LocalExecutor`` (default, in-process); ``RayExecutor`` when a cluster is wanted.

with LocalExecutor() as ex:
    evaluate = ex.evaluator(ReplayJob("bundles/australia"))
"""

from forensics.exec.base import Evaluator, Executor, ReplayJob, TaskError
from forensics.exec.local import LocalExecutor, build_replayer

__all__ = ["Evaluator", "Executor", "LocalExecutor", "ReplayJob", "TaskError", "build_replayer"]
