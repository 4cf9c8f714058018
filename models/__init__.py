"""Model catalog files (TOML), installed as package data."""
