"""Raw dataset readers, canonical interaction tables, splits, slices and task views."""
