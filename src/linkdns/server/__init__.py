"""Listeners, zone routing, sites (server blocks) and the server lifecycle."""
