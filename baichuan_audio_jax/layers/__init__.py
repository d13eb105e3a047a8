"""Building blocks shared by every model of the package."""
