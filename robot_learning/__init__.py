"""Real-robot learning stack: collect -> store -> train -> refine -> deploy -> evaluate."""

__version__ = "0.1.0"
