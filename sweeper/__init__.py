"""sweeper: hyperparameter-transfer sweeps for FP8 LLM training with unit scaling (µS)."""
