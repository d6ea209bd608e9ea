"""hftfarm control plane: config, CLI, controller, supervisor, stage runner (cold path)."""
