"""Customer 360: one row of features per customer as of the run date."""
