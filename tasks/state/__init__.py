"""Application state that must survive runs (watermarks, processed files), in a SQL database."""
