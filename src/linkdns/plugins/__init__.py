"""Bundled plugins; each module registers a PluginSpec on import."""
