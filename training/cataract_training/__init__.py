"""Training for the cataract screening model: audit, fit, evaluate, export, publish."""
