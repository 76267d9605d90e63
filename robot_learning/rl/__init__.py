"""Refinement of base policies (residual RL, value-guided steering, intervention rewards)."""
