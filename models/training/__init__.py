"""Training the built-ins on the story world, and evaluating any model against its known truth."""
