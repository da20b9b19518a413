"""Parameter optimisation: search in-sample, validate out-of-sample, guard against overfitting."""
