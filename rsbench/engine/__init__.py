"""Running cells: grid, one cell, training, evaluation, checkpoints, devices, DDP, launchers."""
