"""Cast raw rows to canonical types, validate them with Great Expectations, quarantine failures."""
