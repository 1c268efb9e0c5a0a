"""Training code for lcmvideo's embedded model family; not installed with the package."""
