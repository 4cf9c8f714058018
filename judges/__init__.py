"""Judge catalog files (TOML), installed as package data (esr_local._judges)."""
