"""Weight mapping and checkpoint conversion between the reference layout and this package."""
