"""lvtl."""
