"""Exporters: trained scenes as files (meshes from SDFs)."""
