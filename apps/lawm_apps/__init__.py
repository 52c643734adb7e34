"""Apps on top of every layer: the demo, the CLI entry that adds it, the process harness."""
