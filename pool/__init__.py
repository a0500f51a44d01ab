"""The tiered storage pool: catalog, backends, tiers, placement, page-in and restore."""
