"""Everything derived from run records: tables, figures, the CPU-reproduction write-up, W&B import.

Pure functions of ``results/runs``; imports only ``src.records``, never the runtime, methods or tasks.
"""
