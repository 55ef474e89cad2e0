"""Entry points users run: label, evaluate, train, models, data, demo (`tsm ...`)."""
