"""Celery queues: one per resource, not per app (see DESIGN.md, Processes)."""

from enum import StrEnum


class Queue(StrEnum):
    DEFAULT = "default"  # short CPU work: imports, QC, aggregation, exports
    RENDER = "render"  # pyrender: OSMesa on CPU, EGL on GPU
    GPU = "gpu"  # training, sampling, critic; one worker per GPU, concurrency 1
