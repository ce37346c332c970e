"""Packaged YAML/JSON configs (installed as `ngraphics.configs`); `configs/README.md` documents every key."""
