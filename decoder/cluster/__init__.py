"""Beyond one machine: batch reconstruction and ensemble training as Ray tasks (the `cluster` extra)."""
