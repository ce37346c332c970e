"""Files: atomic writes, run folders, image reading and writing."""
