"""Refinery's application layer: CLI, HTTP service, pipeline orchestration, configuration loading."""
