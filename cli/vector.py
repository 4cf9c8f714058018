"""Placeholder until this command group is written."""
commands: list = []
