"""File formats and safe, atomic writing."""
