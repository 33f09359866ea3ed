"""Stage 2 -- training: the recipe (one config for CLI, widgets and demo), the trainer,
augmentation, validation, checkpoints, background jobs and the shipped starting model."""
