"""Audience syncs: plan against the ledger, then apply in batches (ARCHITECTURE decision 7)."""
