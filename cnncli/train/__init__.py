"""Training, evaluation and prediction on the NumPy engine (what ``cnn train`` runs)."""
