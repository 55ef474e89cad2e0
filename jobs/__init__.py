"""Entry points users run: label, evaluate, train, model registry, demo (`tsm ...`)."""
