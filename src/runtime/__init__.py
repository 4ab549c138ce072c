"""The training runtime: everything between a composed config and a finished run record.

HF Trainer and its one generic callback (trainer), resumable checkpoints, DDP for parameters born
during training, the W&B mirror (tracking), backbone loading and the Hydra sweep callbacks. It uses
methods, tasks and reporting (for W&B figures); none of them imports it.
"""
