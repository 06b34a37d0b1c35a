"""Training: one readable loop (`loop.py`), checkpoints (`checkpoint.py`), DDP set-up (`distributed.py`)."""
