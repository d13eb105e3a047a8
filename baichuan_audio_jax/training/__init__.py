"""The sharded training engine: mesh, tasks, optimizer, train step, checkpoints, metrics, loop.

``baichuan-audio train --config configs/X.py --workdir DIR`` runs :func:`trainer.train`.
"""
