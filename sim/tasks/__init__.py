"""Tasks: observation, reward and termination, one implementation per task.

Shared by every simulated fidelity, the batched LF collector and the real robot's env.
"""
