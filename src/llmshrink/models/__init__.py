"""Model loading, architecture descriptions and the alias zoo."""
