"""Sweep and paper-table presets (TOML). ``sweep=<name>`` finds them here."""
