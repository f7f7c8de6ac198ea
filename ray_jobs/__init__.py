"""Ray job entrypoints (thin shells over ``forensics``): ``python -m ray_jobs.batch ...``."""
