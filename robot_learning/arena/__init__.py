"""Double-blind pairwise A/B policy arena: FastAPI server, Bradley-Terry ranking, evaluator client."""
