"""PyBullet simulation: the embedded default robot, tasks, experts, domain randomization."""
